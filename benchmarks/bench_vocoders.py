"""CPU real-time factor of the generators: BigVGAN next to HiFi-GAN V1, in one run.

    python benchmarks/bench_vocoders.py [--seconds 2] [--repeats 3] [--threads 1] [--models ...]

Each generator has the published configuration with random weights (speed does not depend on the
values), weight norm folded, ``eval()`` and ``torch.inference_mode()``, float32 on the CPU. The
input is the mel of ``--seconds`` of audio at the model's own rate (HiFi-GAN V1: 22.05 kHz,
hop 256; BigVGAN: 24 kHz, hop 256). One warm-up call per model, then the models run alternately
``--repeats`` times and the median is reported. RTF = synthesis time / audio duration (below 1 is
faster than real time), from the wall clock and from the process's CPU time (``time.process_time``):
on a shared machine the wall clock also counts the time other processes hold the cores, the CPU time
does not. Prints a markdown table. For a smoke run: ``--seconds 0.1 --repeats 1``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time

import torch
from torch import nn

from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.peers import hifigan as hifigan_peer

# name -> (sample rate, constructor kwargs); the HiFi-GAN class comes from the one place that names it.
MODELS = {
    "hifigan_v1": (22050, {"upsample_initial_channel": 512}),
    "bigvgan_v2_24khz_100band_256x": (24000, {}),
    "bigvgan_base_24khz_100band": (
        24000,
        {"upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4], "upsample_initial_channel": 512,
         "use_tanh_at_final": True, "use_bias_at_final": True},
    ),
}


def build(name: str) -> tuple[nn.Module, int]:
    rate, kwargs = MODELS[name]
    if name.startswith("hifigan"):
        module_name, _, class_name = hifigan_peer.GENERATOR_TARGET.rpartition(".")
        model = getattr(importlib.import_module(module_name), class_name)(num_mels=80, **kwargs)
    else:
        model = BigVGANGenerator(**kwargs)
    model.remove_weight_norm()
    return model.eval(), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length the mel stands for")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    models, mels = {}, {}
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        model, rate = build(name)
        frames = max(1, round(args.seconds * rate / model.hop_size))
        models[name] = (model, rate)
        mels[name] = torch.randn(1, model.num_mels, frames) - 5.0
        with torch.inference_mode():
            model(mels[name])  # warm-up: allocator and kernel selection
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                models[name][0](mels[name])
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), median of {args.repeats}, mel of {args.seconds:g} s")
    print()
    print("| model | params (M) | rate | wall time per call (s) | RTF (wall) | RTF (CPU time) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        model, rate = models[name]
        seconds = mels[name].shape[-1] * model.hop_size / rate
        t, c = statistics.median(wall[name]), statistics.median(cpu[name])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {params:.1f} | {rate} | {t:.3f} | {t / seconds:.3f} | {c / seconds:.3f} |")


if __name__ == "__main__":
    main()
