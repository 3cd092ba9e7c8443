"""CPU speed of the published-size Vocos against HiFi-GAN V1, in one run, on the same mels.

    python benchmarks/bench_vocos.py [--seconds 10] [--threads 2] [--rounds 7] [--quick]

Both generators are built from their presets' generator nodes, ``conf/model/vocos_mel_24k.yaml`` and
``conf/model/hifigan_v1.yaml``, composed with ``features=vocos_24k``. Both get the same random
``(1, 100, frames)`` mel (hop 256, so ``frames`` = seconds x 24000 / 256) and produce the same number of
samples; 100 bands for both (HiFi-GAN V1 was published with 80: its input conv is the only layer that
changes, 0.2 % of its multiply-adds). Weights are
random: the time does not depend on them. HiFi-GAN runs with weight norm folded, everything under
``torch.inference_mode``. The contenders alternate within each round, so a busy machine slows both
alike; each time is the best of ``--rounds`` rounds, and the last column is the median over rounds of
HiFi-GAN's time divided by the contender's, both timed in the same round. The speed is audio seconds
per compute second ("x real time"); RTF is its inverse. The load average printed before and after
says how busy the machine was.

Vocos is timed twice: with its ISTFT's ``irfft`` (the default) and with the inverse-DFT matrix
product that ONNX export uses (``ISTFT.use_dft_matmul``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from melvoc.features import MelConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
FEATURES = "vocos_24k"


def _generator(preset: str) -> torch.nn.Module:
    """The generator node of ``conf/model/<preset>.yaml`` with the ``vocos_24k`` features."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"features={FEATURES}", f"model={preset}"])
    return instantiate(cfg.model.generator)


def _features() -> MelConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return MelConfig.coerce(compose(config_name="train", overrides=[f"features={FEATURES}"]).features)


def _contenders() -> dict[str, torch.nn.Module]:
    vocos = _generator("vocos_mel_24k")
    vocos_matmul = _generator("vocos_mel_24k")
    vocos_matmul.load_state_dict(vocos.state_dict())
    vocos_matmul.head.istft.use_dft_matmul()
    hifigan = _generator("hifigan_v1").remove_weight_norm()
    return {
        "Vocos (irfft)": vocos.eval(),
        "Vocos (DFT matmul)": vocos_matmul.eval(),
        "HiFi-GAN V1": hifigan.eval(),
    }


def _time(call: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length of the mel")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s of audio, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 1.0, 2

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    features = _features()
    rate, hop, num_mels = features.sampling_rate, features.hop_size, features.num_mels
    frames = max(1, round(args.seconds * rate / hop))
    mel = torch.randn(1, num_mels, frames)
    audio_seconds = frames * hop / rate
    models = _contenders()
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}

    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        outputs = {name: model(mel) for name, model in models.items()}  # warm-up
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name].append(_time(lambda: model(mel)))
    best = {name: min(values) for name, values in times.items()}
    lengths = {tuple(out.shape) for out in outputs.values()}
    if len(lengths) != 1:
        raise RuntimeError(f"the generators disagree on the output shape: {lengths}")
    difference = (outputs["Vocos (irfft)"] - outputs["Vocos (DFT matmul)"]).abs().max().item()

    print(
        f"{audio_seconds:.2f} s of {rate} Hz audio ({frames} frames x hop {hop}, {num_mels} mels), "
        f"{args.threads} threads, best of {args.rounds} rounds, torch {torch.__version__}, "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print("| generator | parameters (M) | best time (s) | x real time | RTF | speed vs HiFi-GAN V1 (median of rounds) |")
    print("|---|---|---|---|---|---|")
    reference = times["HiFi-GAN V1"]
    for name, seconds in best.items():
        ratio = statistics.median(r / t for r, t in zip(reference, times[name]))
        print(
            f"| {name} | {params[name]:.1f} | {seconds:.4f} | {audio_seconds / seconds:.1f} | "
            f"{seconds / audio_seconds:.4f} | {ratio:.1f}x |"
        )
    print(f"\nmax |irfft - DFT matmul| on this output: {difference:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
