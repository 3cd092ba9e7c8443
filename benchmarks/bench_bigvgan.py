"""BigVGAN: melvoc's fast path, melvoc's reference path and NVIDIA's official torch code, same weights, one run.

    python benchmarks/bench_bigvgan.py [--widths 256 1536] [--threads 2] [--rounds 5] [--seconds 1]
                                       [--segment 8192] [--train-steps 3] [--train-rounds 2]
                                       [--clock wall|cpu] [--device cpu|cuda] [--json r.json]
    python benchmarks/bench_bigvgan.py --smoke       # width 64, short inputs, one round (the test suite)

Contenders, each built on the BigVGAN v2 24 kHz 100-band 256x layout (NVIDIA/BigVGAN
``configs/bigvgan_v2_24khz_100band_256x.json``) at ``upsample_initial_channel`` = each ``--widths``:

* ``official``: the ``bigvgan`` package (NVIDIA's code, PyPI 2.4.1) with its torch activation
  (``use_cuda_kernel=False``); skipped, with a note, where the package is not installed
  (``pip install --no-deps bigvgan huggingface_hub``; it is no dependency of melvoc);
* ``melvoc reference``: ``BigVGANGenerator(fast_activation=False)``;
* ``melvoc fast``: ``BigVGANGenerator(fast_activation=True)``, the default;
* ``official CUDA kernel`` (``--device cuda`` only): the official model with ``use_cuda_kernel=True``,
  NVIDIA's fused activation kernel, which the package compiles with nvcc on first use (CUDA toolkit
  and ninja needed); forward only, since the kernel has no backward. Where it does not build, the
  script prints why and times the rest.

The weights are the official model's, random (seed 0), saved in its checkpoint format and read by
``melvoc.peers.bigvgan``; without the package, melvoc's own random weights. Cases:

* ``forward``: ``--seconds`` of audio (a random log-mel), batch 1, weight norm folded, eval, inference mode;
* ``forward+backward``: a ``--segment``-sample crop, batch 1, weight norm on (as in training), the
  gradient of a random projection of the output with respect to every parameter;
* ``training step``: one step of ``model=bigvgan_v2_24k_100band`` (the real Hydra config: generator at
  the published width, MPD + CQT-D, multi-scale mel loss, AdamW, clipping) through a Lightning Trainer
  on the built-in synthetic speech set, batch 1, ``--segment`` samples, fast against reference
  activation. The two alternate fits of ``--train-steps`` steps ``--train-rounds`` times; a fit's
  first step (warm-up) is not counted.

``forward`` and ``forward+backward`` interleave the contenders round by round on the same input (one
untimed warm-up call each first); a time is the median over rounds, a ratio the median over rounds of
the two times of that round. Output: the settings, a markdown table (the README's), the largest output
difference between the contenders, and how busy the machine was while timing (from ``/proc/stat``).
On a machine others share the times move; compare the ratios within one run (with another process
holding a core, ``--threads 1 --clock cpu`` still gives usable ratios). The last column is issue 23's
acceptance bar for the fast path against the official code.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from bench_features import MachineLoad
from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset
from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.peers import bigvgan as bigvgan_peer

CONF = Path(__file__).resolve().parents[1] / "conf"
#: configs/bigvgan_v2_24khz_100band_256x.json: the generator fields (the width comes from --widths) ...
GENERATOR = {
    "num_mels": 100, "resblock": "1", "upsample_rates": [4, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "activation": "snakebeta", "snake_logscale": True, "use_tanh_at_final": False, "use_bias_at_final": False,
}
#: ... and the feature fields melvoc.peers.bigvgan reads with them.
FEATURES = {"n_fft": 1024, "hop_size": 256, "win_size": 1024, "sampling_rate": 24000, "fmin": 0, "fmax": None,
            "fmax_for_loss": None}
FAST, REFERENCE, OFFICIAL, OFFICIAL_CUDA = "melvoc fast", "melvoc reference", "official", "official CUDA kernel"
#: Acceptance bars of issue 23 (fast over official).
BARS = {"forward": 1.5, "forward+backward": 1.3}


@dataclass
class Case:
    name: str
    width: int
    detail: str
    times: dict[str, list[float]] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)

    def median(self, who: str) -> float:
        return statistics.median(self.times[who]) if self.times.get(who) else math.nan

    def ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of ``slow / fast``, both timed in the same round."""
        pairs = [r[slow] / r[fast] for r in self.rounds if slow in r and fast in r]
        return statistics.median(pairs) if pairs else math.nan


def official_package():
    """NVIDIA's ``bigvgan`` module, or ``None`` with the reason printed."""
    try:
        from bigvgan import bigvgan as official
    except ImportError as exc:
        print(f"note: the official 'bigvgan' package is not importable ({exc}); timing melvoc only. "
              "pip install --no-deps bigvgan huggingface_hub (and librosa, scipy, matplotlib)")
        return None
    return official


def cuda_kernel_model(official, config: dict, state: dict) -> Optional[nn.Module]:
    """The official model on NVIDIA's fused CUDA activation (built by the package on first use), loaded with
    ``state``; ``None``, with the reason printed, where it does not build."""
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        print("note: the official CUDA kernel needs the CUDA toolkit (nvcc; none found: set CUDA_HOME); timing without it")
        return None
    try:
        model = official.BigVGAN(official.AttrDict(config), use_cuda_kernel=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # the build runs nvcc and ninja: any of their failures means "does not build here"
        print(f"note: the official CUDA kernel did not build or load ({type(exc).__name__}: {exc}); "
              "timing without it")
        return None
    return model


def generators(width: int, official, workdir: Path, device: str = "cpu") -> dict[str, nn.Module]:
    """The contenders at ``width`` with the same weights (weight norm on, train mode); on CUDA also the
    official model on its fused kernel, where that builds."""
    config = {**GENERATOR, **FEATURES, "upsample_initial_channel": width}
    torch.manual_seed(0)
    out: dict[str, nn.Module] = {}
    if official is not None:
        model = official.BigVGAN(official.AttrDict(config), use_cuda_kernel=False)
        folder = workdir / f"official_{width}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        torch.save({"generator": model.state_dict()}, folder / bigvgan_peer.GENERATOR_FILE)
        checkpoint = bigvgan_peer.read(folder)
        node, state = checkpoint.generator, checkpoint.generator_state
        out[OFFICIAL] = model
        if device.startswith("cuda"):
            kernel = cuda_kernel_model(official, config, model.state_dict())
            if kernel is not None:
                out[OFFICIAL_CUDA] = kernel
    else:
        node = {"_target_": bigvgan_peer.GENERATOR_TARGET, **GENERATOR, "upsample_initial_channel": width}
        state = instantiate({**node, "fast_activation": False}).state_dict()
    for name, fast in ((REFERENCE, False), (FAST, True)):
        generator = instantiate({**node, "fast_activation": fast})
        generator.load_state_dict(state, strict=True)
        out[name] = generator
    return out


def fold(model: nn.Module) -> nn.Module:
    """Weight norm folded (the official model's own ``remove_weight_norm`` for it), eval mode."""
    if isinstance(model, BigVGANGenerator):
        return model.remove_weight_norm().eval()
    model.remove_weight_norm()
    return model.eval()


def interleave(case: Case, calls: dict[str, Callable[[], object]], args: argparse.Namespace) -> None:
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for call in calls.values():
        call()
    for _ in range(args.rounds):
        this = {}
        for who, call in calls.items():
            sync()
            start = args.clock()
            call()
            sync()
            this[who] = args.clock() - start
            case.times.setdefault(who, []).append(this[who])
        case.rounds.append(this)


def forward_cases(width: int, models: dict[str, nn.Module], args: argparse.Namespace) -> tuple[list[Case], str]:
    frames = max(1, round(args.seconds * 24000 / 256))
    torch.manual_seed(1)
    mel = (torch.rand(1, 100, frames) * 10 - 8).to(args.device)
    seg_frames = max(1, args.segment // 256)
    seg_mel = (torch.rand(1, 100, seg_frames) * 10 - 8).to(args.device)
    projection = torch.randn(1, 1, seg_frames * 256).to(args.device)
    models = {who: m.to(args.device) for who, m in models.items()}

    def train_call(model: nn.Module) -> Callable[[], object]:
        params = list(model.parameters())

        def call() -> None:
            for p in params:
                p.grad = None
            (model(seg_mel) * projection).sum().backward()

        return call

    backward = Case("forward+backward", width, f"{seg_frames * 256} samples")
    # NVIDIA's fused kernel has no backward: forward only.
    trainable = {who: m for who, m in models.items() if who != OFFICIAL_CUDA}
    interleave(backward, {who: train_call(m.train()) for who, m in trainable.items()}, args)

    folded = {who: fold(m) for who, m in models.items()}
    forward = Case("forward", width, f"{frames * 256 / 24000:.2f} s of audio")
    with torch.inference_mode():
        outputs = {who: m(mel) for who, m in folded.items()}
        interleave(forward, {who: (lambda m=m: m(mel)) for who, m in folded.items()}, args)
    base = outputs.get(OFFICIAL, outputs[REFERENCE])
    diffs = ", ".join(f"{who} {(out - base).abs().max().item():.1e}" for who, out in outputs.items() if out is not base)
    against = OFFICIAL if OFFICIAL in outputs else REFERENCE
    return [forward, backward], f"width {width}: largest |output - {against}|: {diffs}"


class StepTimer(L.Callback):
    """Time of each training step (``on_train_batch_start`` to ``_end``) by ``clock``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._start = self.clock()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(self.clock() - self._start)


def training_case(args: argparse.Namespace, workdir: Path) -> Case:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    spec = SyntheticSpec(sampling_rate=24000, num_train=4, num_val=1, min_seconds=1.0, max_seconds=1.5, seed=3)
    data = make_synthetic_dataset(workdir / "speech", spec)
    overrides = [
        "experiment=bigvgan_v2_24k_100band", f"data.train_filelist={data / 'train.txt'}",
        f"data.val_filelist={data / 'val.txt'}", "data.batch_size=1", f"data.segment_size={args.segment}",
        "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
        f"paths.output_dir={workdir / 'run'}", f"paths.log_dir={workdir / 'logs'}",
    ]
    if args.smoke:
        overrides += ["model.generator.upsample_initial_channel=64", "model.discriminators.mpd.channels=[4,8,8,8,8]",
                      "model.discriminators.cqtd.filters=4", "model.discriminators.cqtd.max_filters=8"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    case = Case("training step", int(cfg.model.generator.upsample_initial_channel),
                f"model=bigvgan_v2_24k_100band, batch 1 x {args.segment}")
    for _ in range(args.train_rounds):
        this = {}
        for who, fast in ((REFERENCE, False), (FAST, True)):
            L.seed_everything(0, verbose=False)
            cfg.model.generator.fast_activation = fast
            model, datamodule, timer = instantiate(cfg.model), instantiate(cfg.data), StepTimer(args.clock)
            trainer = L.Trainer(
                accelerator="cuda" if args.device.startswith("cuda") else "cpu", devices=1, max_steps=args.train_steps + 1, limit_val_batches=0,
                num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, callbacks=[timer], default_root_dir=str(workdir / "run"),
            )
            trainer.fit(model, datamodule=datamodule)
            steps = timer.times[1:]
            case.times.setdefault(who, []).extend(steps)
            this[who] = statistics.median(steps)
        case.rounds.append(this)
    return case


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def _x(ratio: float) -> str:
    return "-" if math.isnan(ratio) else f"{ratio:.2f}x"


def table(cases: list[Case]) -> str:
    """The markdown table; the official CUDA kernel's two columns only where it was timed."""
    kernel = any(OFFICIAL_CUDA in c.times for c in cases)
    head = "| case | width | input | official ms | melvoc reference ms | melvoc fast ms | fast vs official "
    rule = "|---|---:|---|---:|---:|---:|---:|"
    if kernel:
        head += "| official CUDA kernel ms | fast vs CUDA kernel "
        rule += "---:|---:|"
    lines = [head + "| fast vs reference | bar |", rule + "---:|---|"]
    for c in cases:
        bar = BARS.get(c.name)
        row = (f"| {c.name} | {c.width} | {c.detail} | {_ms(c.median(OFFICIAL))} | {_ms(c.median(REFERENCE))} | "
               f"{_ms(c.median(FAST))} | {_x(c.ratio(OFFICIAL, FAST))} | ")
        if kernel:
            row += f"{_ms(c.median(OFFICIAL_CUDA))} | {_x(c.ratio(OFFICIAL_CUDA, FAST))} | "
        lines.append(row + f"{_x(c.ratio(REFERENCE, FAST))} | {'>= ' + _x(bar) + ' vs official' if bar else ''} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1536], help="upsample_initial_channel values")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds the official CUDA kernel, where it builds)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of forward and forward+backward")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per forward call")
    parser.add_argument("--segment", type=int, default=8192, help="samples of forward+backward and training steps")
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per fit (0: no training case)")
    parser.add_argument("--train-rounds", type=int, default=2, help="fits per path, alternating")
    parser.add_argument("--smoke", action="store_true",
                        help="width 64, 0.1 s, 4096 samples, one round: checks that the script runs")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: this process's CPU time (all threads); with --threads 1 steadier than wall time on a busy machine",
    )
    parser.add_argument("--json", type=Path, help="also write the cases here")
    args = parser.parse_args(argv)
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.smoke:
        args.widths, args.seconds, args.segment, args.rounds = [64], 0.1, 4096, 1
        args.train_steps, args.train_rounds = 1, 1
    torch.set_num_threads(args.threads)
    official = official_package()
    cases: list[Case] = []
    notes: list[str] = []
    load = MachineLoad()
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            found, note = forward_cases(width, generators(width, official, Path(tmp), args.device), args)
            cases.extend(found)
            notes.append(note)
            print(f"done: width {width}", file=sys.stderr, flush=True)
        if args.train_steps > 0:
            cases.append(training_case(args, Path(tmp)))
    cases.sort(key=lambda c: ["forward", "forward+backward", "training step"].index(c.name))
    print(
        f"BigVGAN v2 24 kHz layout on {args.device} ({platform.machine()}, {args.threads} threads, torch {torch.__version__}"
        f"{', SMOKE RUN' if args.smoke else ''}); forward and forward+backward: median of {args.rounds} interleaved "
        f"rounds; training step: median of {args.train_steps} steps x {args.train_rounds} alternating fits"
    )
    print()
    print(table(cases))
    print()
    print("\n".join(notes))
    if official is None:
        print("official: not installed, so no 'fast vs official' ratio")
    share = load.share()
    if share is not None:
        others, steal = share
        print(f"CPU time not ours while timing: other processes {others:.0%}, hypervisor steal {steal:.0%}")
        if others + steal > 0.1:
            print("warning: the machine was busy; rerun when it is idle for numbers to publish.")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
