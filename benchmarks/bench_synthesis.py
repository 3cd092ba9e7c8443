"""Real-time factor of melvoc's generators: PyTorch eager, torch.compile and ONNX Runtime, in one run.

    python benchmarks/bench_synthesis.py [--seconds 5] [--threads 2] [--rounds 5] [--json results.json]
    python benchmarks/bench_synthesis.py --smoke          # tiny widths, a fraction of a second (the test suite)

Models: HiFi-GAN V1, V2 and V3 (``conf/model/hifigan_v*.yaml``, features ``hifigan_22k``), and, where
their modules exist, BigVGAN v2 24 kHz 100-band (``BigVGANGenerator`` defaults, features ``bigvgan_24k``)
and Vocos mel 24 kHz (``VocosGenerator`` defaults, features ``vocos_24k``). A family whose module is
absent is listed as skipped. Weights are random (the speed does not depend on training), weight norm
folded, eval mode, float32, batch 1, one mel of ``--seconds`` of audio.

Backends (interleaved round by round, on the same input, after ``--warmup`` calls each):

* ``eager``: ``generator(mel)`` under ``torch.inference_mode``, ``torch.set_num_threads(threads)``;
* ``compile``: ``torch.compile(generator)`` (inductor, static shape); where compiling fails the error
  is shown; not run with ``--smoke`` (compiling takes minutes);
* ``onnxruntime`` at each ``--ort-levels`` graph optimisation level, ``intra_op_num_threads=threads``;
* ``stream-N``: :class:`melvoc.streaming.StreamingVocoder` in eager mode, ``--chunk-frames`` N frames per
  chunk (each chunk recomputes the receptive field's context, so it costs more than one whole call).

Columns: ``RTF`` = compute time / audio duration (median over rounds; lower is faster) and ``xRT`` =
its inverse, the "times real time" the HiFi-GAN and Vocos papers print; ``vs eager`` is eager's median
time over the backend's. On a shared machine the times are noisy: compare backends within one run.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch import nn

from melvoc.features import MelConfig

CONF = Path(__file__).resolve().parents[1] / "conf"

#: name -> (features preset, how to build the generator: a conf/model name or a class path with defaults)
MODELS = {
    "hifigan_v1": ("hifigan_22k", "model:hifigan_v1"),
    "hifigan_v2": ("hifigan_22k", "model:hifigan_v2"),
    "hifigan_v3": ("hifigan_22k", "model:hifigan_v3"),
    "bigvgan_v2_24khz_100band": ("bigvgan_24k", "class:melvoc.models.bigvgan.BigVGANGenerator"),
    "vocos_mel_24khz": ("vocos_24k", "class:melvoc.models.vocos.VocosGenerator"),
}
#: Widths of the --smoke models: the published layouts, narrow.
SMOKE_WIDTH = {"upsample_initial_channel": 64, "dim": 32, "intermediate_dim": 64}


class Skipped(Exception):
    """A model that cannot be built here (its family's module is absent)."""


@dataclass
class Row:
    model: str
    backend: str
    params_m: float
    audio_seconds: float
    times: list[float] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def rtf(self) -> float:
        return self.median / self.audio_seconds

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(median_seconds=self.median, best_seconds=min(self.times, default=math.nan), rtf=self.rtf,
                   x_realtime=1 / self.rtf if self.times else math.nan)
        return out


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def build(name: str, smoke: bool) -> tuple[nn.Module, MelConfig]:
    """The generator ``name`` (random weights, weight norm folded, eval) and its features."""
    preset, how = MODELS[name]
    kind, _, target = how.partition(":")
    if kind == "model":
        cfg = _compose([f"model={target}", f"features={preset}"])
        node = OmegaConf.to_container(cfg.model.generator, resolve=True)
        cls = get_class(node.pop("_target_"))
    else:
        module, _, cls_name = target.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError as exc:
            raise Skipped(f"{module} is not importable ({exc})") from exc
        cfg = _compose([f"features={preset}"])
        node = {}
    config = MelConfig.coerce(cfg.features)
    node["num_mels"] = config.num_mels
    if smoke:
        accepted = inspect.signature(cls).parameters
        node.update({k: v for k, v in SMOKE_WIDTH.items() if k in accepted})
    generator = cls(**node).remove_weight_norm().eval()
    if generator.hop_size != config.hop_size:
        raise ValueError(f"{name}: generator hop {generator.hop_size} != features hop {config.hop_size}")
    generator.config = config
    return generator, config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backends(
    generator: nn.Module, mel: torch.Tensor, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """``(name -> a zero-argument call to time, name -> why that backend could not be prepared)``."""
    device = mel.device
    calls: dict[str, Callable[[], object]] = {}
    errors: dict[str, str] = {}

    def eager():
        with torch.inference_mode():
            out = generator(mel)
        _sync(device)
        return out

    calls["eager"] = eager
    if "stream" in args.backends:
        from melvoc.streaming import StreamingVocoder

        stream = StreamingVocoder(generator)

        def streamed():
            out = stream.vocode(mel, args.chunk_frames)
            _sync(device)
            return out

        calls[f"stream-{args.chunk_frames}"] = streamed
    if "compile" in args.backends and not args.smoke:
        try:
            compiled = torch.compile(generator, dynamic=False)
            with torch.inference_mode():
                compiled(mel)  # compiles here, outside the timing

            def run_compiled():
                with torch.inference_mode():
                    out = compiled(mel)
                _sync(device)
                return out

            calls["compile"] = run_compiled
        except Exception as exc:  # inductor raises many kinds (no compiler, unsupported op, ...)
            errors["compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if "onnxruntime" in args.backends:
        try:
            from melvoc.onnx_export import OnnxVocoder, export_onnx

            path = export_onnx(generator, workdir / "generator.onnx")
            array = mel.cpu().numpy()
            for level in args.ort_levels:
                vocoder = OnnxVocoder(path, threads=args.threads, optimization=level)
                calls[f"onnxruntime-{level}"] = lambda vocoder=vocoder: vocoder(array)
        except Exception as exc:
            errors["onnxruntime"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return calls, errors


def bench_model(name: str, args: argparse.Namespace) -> list[Row]:
    try:
        generator, config = build(name, args.smoke)
    except Skipped as exc:
        return [Row(name, "-", math.nan, args.seconds, error=f"skipped: {exc}")]
    device = torch.device(args.device)
    generator = generator.to(device)
    frames = max(1, round(args.seconds * config.sampling_rate / config.hop_size))
    audio_seconds = frames * config.hop_size / config.sampling_rate
    torch.manual_seed(0)
    # Log-mels of a plausible range (silence floor log(1e-5) ~ -11.5 up to ~2).
    mel = (torch.rand(1, config.num_mels, frames, device=device) * 10 - 8)
    params = sum(p.numel() for p in generator.parameters()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        calls, errors = backends(generator, mel, args, Path(tmp))
        rows = {b: Row(name, b, params, audio_seconds) for b in calls}
        rows.update({b: Row(name, b, params, audio_seconds, error=e) for b, e in errors.items()})
        for backend, call in calls.items():
            for _ in range(args.warmup):
                call()
        for _ in range(args.rounds):
            for backend, call in calls.items():
                start = time.perf_counter()
                call()
                rows[backend].times.append(time.perf_counter() - start)
    return list(rows.values())


def table(rows: list[Row], args: argparse.Namespace) -> str:
    eager = {r.model: r.median for r in rows if r.backend == "eager" and r.times}
    lines = [
        f"real-time factor on {args.device} ({args.threads} threads; torch {torch.__version__}), "
        f"{args.seconds:g} s of audio per call, median of {args.rounds} rounds",
        "",
        "| model | params (M) | backend | median (s) | RTF | xRT | vs eager |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.model} | {r.params_m:.2f} | {r.backend} | {r.error} | | | |")
            continue
        ratio = eager[r.model] / r.median if r.model in eager else math.nan
        lines.append(
            f"| {r.model} | {r.params_m:.2f} | {r.backend} | {r.median:.4f} | {r.rtf:.4f} | "
            f"{1 / r.rtf:.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "onnxruntime", "stream"],
                        choices=["eager", "compile", "onnxruntime", "stream"])
    parser.add_argument("--chunk-frames", type=int, default=32, help="frames per chunk of the stream backend")
    parser.add_argument("--ort-levels", nargs="+", default=["basic", "all"],
                        choices=["disable", "basic", "extended", "all"])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per call (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ONNX Runtime runs on the CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="narrow models, 0.2 s of audio, 1 warm-up and 1 timed call, no compile: checks the script runs")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.rounds, args.warmup = 0.2, 1, 1
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for name in args.models:
        try:
            rows.extend(bench_model(name, args))
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(name, "-", math.nan, args.seconds, error=f"failed: {type(exc).__name__}: {exc}"))
        print(f"done: {name}", file=sys.stderr, flush=True)
    print(table(rows, args))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
