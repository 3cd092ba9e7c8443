"""Real-time factor of melvoc's generators: PyTorch eager, torch.compile and ONNX Runtime, in one run.

    python benchmarks/bench_synthesis.py [--models ...] [--seconds 10] [--threads 2] [--rounds 3]
                                         [--slow-seconds 3] [--slow-rounds 2] [--markdown] [--json r.json]
    python benchmarks/bench_synthesis.py --smoke          # narrow widths, 0.2 s of audio (the test suite)

One script for three questions: how fast every family runs on the CPU (issue 15), BigVGAN next to
HiFi-GAN V1 (issue 12) and the published-size Vocos against HiFi-GAN V1 (issue 13, aim >= 10x).

Models: each is the generator node of ``conf/model/<name>.yaml`` composed with its features preset
through the real Hydra config, so the widths are the presets' published ones: HiFi-GAN V1, V2 and V3
(features ``hifigan_22k``), BigVGAN v2 24 kHz 100-band 256x (``bigvgan_24k``, 112 M parameters) and
Vocos mel 24 kHz (``vocos_24k``). ``--smoke`` narrows the width keys of those nodes. Weights are random
(the speed does not depend on them), weight norm folded, eval mode, float32, batch 1, one random log-mel
of ``--seconds`` of audio at the model's own rate.

Backends (interleaved round by round, on the same input, after ``--warmup`` calls each):

* ``eager``: ``generator(mel)`` under ``torch.inference_mode``, ``torch.set_num_threads(threads)``;
* ``eager-dft`` (Vocos only): eager with the ISTFT's frames from the inverse-DFT matrix product, the form
  ONNX export uses, instead of ``irfft``;
* ``compile``: ``torch.compile(generator)`` (inductor, static shape), compiled before the timing; where
  compiling fails the error is shown; not run with ``--smoke`` (compiling takes minutes);
* ``onnxruntime-<level>`` at each ``--ort-levels`` graph optimisation level, ``intra_op_num_threads=threads``;
* ``stream-N``: :class:`melvoc.deploy.streaming.StreamingVocoder` in eager mode, ``--chunk-frames`` N frames per
  chunk (each chunk recomputes the receptive field's context, so it costs more than one whole call).

BigVGAN at its published size runs about 5x slower than HiFi-GAN V1, so it gets ``--slow-seconds`` of
audio per call and ``--slow-rounds`` rounds (the settings line states them); the defaults keep a full
run of every model and backend under about 8 minutes on an idle 2-core machine. Its RTF hardly depends
on the length once the input is many receptive fields long, so the ratios stay comparable.

Output: the settings, one row per model and backend (median seconds per call, RTF = compute time / audio
duration, xRT = its inverse, the "times real time" the HiFi-GAN and Vocos papers print, and the speed
against eager), then one row per model: xRT of eager, compile and ONNX Runtime (its fastest level),
ORT / eager (speed-up), "vs HiFi-GAN V1" = V1's eager RTF / the model's eager RTF (above 1 is faster
than V1; the Vocos aim is >= 10x) and the published anchor. ``--markdown`` prints only the settings and
that per-model table, ready for the README. On a shared machine the times are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
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
from hydra.utils import instantiate
from torch import nn

from melvoc.features import MelConfig

CONF = Path(__file__).resolve().parents[1] / "conf"

#: conf/model preset -> the features preset it was published with.
MODELS = {
    "hifigan_v1": "hifigan_22k",
    "hifigan_v2": "hifigan_22k",
    "hifigan_v3": "hifigan_22k",
    "bigvgan_v2_24k_100band": "bigvgan_24k",
    "vocos_mel_24k": "vocos_24k",
}
#: Models timed on --slow-seconds of audio for --slow-rounds rounds.
SLOW = {"bigvgan_v2_24k_100band"}
REFERENCE = "hifigan_v1"
#: --smoke widths, applied to whichever of these keys a generator node has.
SMOKE_WIDTH = {"upsample_initial_channel": 64, "dim": 32, "intermediate_dim": 64}
LABELS = {"eager-dft": "ONNX-form ISTFT, eager"}
#: The papers' numbers, for the README's "published anchor" column; other hardware and batch sizes.
ANCHORS = {
    "hifigan_v1": "1.43x CPU / 167.86x GPU [1]",
    "hifigan_v2": "9.74x CPU / 764.80x GPU [1]",
    "hifigan_v3": "13.44x CPU / 1186.80x GPU [1]",
    "bigvgan_v2_24k_100band": "BigVGAN (14 M base): 0.40x CPU / 98.61x GPU [2]",
    "vocos_mel_24k": "169.63x CPU / 6696.52x GPU (HiFi-GAN there: 5.84x / 495.54x) [2]",
}
FOOTNOTES = (
    "[1] HiFi-GAN paper, Table 1: MacBook Pro CPU (Intel i7, 2.6 GHz) and an NVIDIA V100 GPU.\n"
    "[2] Vocos paper, Table 5: AMD EPYC 7542 CPU and an NVIDIA A100 GPU, batch of 16 one-second clips."
)


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

    @property
    def x_realtime(self) -> float:
        return 1 / self.rtf if self.times else math.nan

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(median_seconds=self.median, best_seconds=min(self.times, default=math.nan), rtf=self.rtf,
                   x_realtime=self.x_realtime)
        return out


def build(name: str, smoke: bool) -> tuple[nn.Module, MelConfig]:
    """The generator of ``conf/model/<name>.yaml`` with its features (random weights, weight norm folded, eval)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", f"features={MODELS[name]}"])
    node = cfg.model.generator
    narrow = {key: value for key, value in SMOKE_WIDTH.items() if smoke and key in node}
    generator = instantiate(node, **narrow).remove_weight_norm().eval()
    config = MelConfig.coerce(cfg.features)
    if generator.hop_size != config.hop_size:
        raise ValueError(f"{name}: generator hop {generator.hop_size} != features hop {config.hop_size}")
    generator.config = config
    return generator, config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(exc: Exception) -> str:
    message = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"


def backends(
    generator: nn.Module, mel: torch.Tensor, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """``(name -> a zero-argument call to time, name -> why that backend could not be prepared)``."""
    device = mel.device
    calls: dict[str, Callable[[], object]] = {}
    errors: dict[str, str] = {}

    def eager_call(module: nn.Module) -> Callable[[], object]:
        def call():
            with torch.inference_mode():
                out = module(mel)
            _sync(device)
            return out

        return call

    calls["eager"] = eager_call(generator)
    istft = getattr(getattr(generator, "head", None), "istft", None)
    if hasattr(istft, "use_dft_matmul"):
        dft = copy.deepcopy(generator)
        dft.head.istft.use_dft_matmul()
        calls["eager-dft"] = eager_call(dft)
    if "stream" in args.backends:
        from melvoc.deploy.streaming import StreamingVocoder

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
            calls["compile"] = eager_call(compiled)
        except Exception as exc:  # inductor raises many kinds (no compiler, unsupported op, ...)
            errors["compile"] = _error(exc)
    if "onnxruntime" in args.backends:
        try:
            from melvoc.deploy.onnx_export import OnnxVocoder, export_onnx

            path = export_onnx(generator, workdir / "generator.onnx")
            array = mel.cpu().numpy()
            for level in args.ort_levels:
                vocoder = OnnxVocoder(path, threads=args.threads, optimization=level)
                calls[f"onnxruntime-{level}"] = lambda vocoder=vocoder: vocoder(array)
        except Exception as exc:
            errors["onnxruntime"] = _error(exc)
    return calls, errors


def rounds_for(name: str, args: argparse.Namespace) -> int:
    return args.slow_rounds if name in SLOW else args.rounds


def seconds_for(name: str, args: argparse.Namespace) -> float:
    return args.slow_seconds if name in SLOW else args.seconds


def bench_model(name: str, args: argparse.Namespace) -> list[Row]:
    generator, config = build(name, args.smoke)
    device = torch.device(args.device)
    generator = generator.to(device)
    frames = max(1, round(seconds_for(name, args) * config.sampling_rate / config.hop_size))
    audio_seconds = frames * config.hop_size / config.sampling_rate
    torch.manual_seed(0)
    # Log-mels of a plausible range (silence floor log(1e-5) ~ -11.5 up to ~2).
    mel = torch.rand(1, config.num_mels, frames, device=device) * 10 - 8
    params = sum(p.numel() for p in generator.parameters()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        calls, errors = backends(generator, mel, args, Path(tmp))
        rows = {b: Row(name, b, params, audio_seconds) for b in calls}
        rows.update({b: Row(name, b, params, audio_seconds, error=e) for b, e in errors.items()})
        for call in calls.values():
            for _ in range(args.warmup):
                call()
        for _ in range(rounds_for(name, args)):
            for backend, call in calls.items():
                start = time.perf_counter()
                call()
                rows[backend].times.append(time.perf_counter() - start)
    return list(rows.values())


def settings(args: argparse.Namespace) -> str:
    slow = [m for m in args.models if m in SLOW]
    slow_note = (
        f" ({', '.join(slow)}: {args.slow_seconds:g} s, median of {args.slow_rounds} rounds)" if slow else ""
    )
    return (
        f"real-time factor on {args.device} ({platform.machine()}, threads {args.threads}, torch {torch.__version__}), "
        f"{'SMOKE RUN (narrow widths, no compile), ' if args.smoke else ''}"
        f"batch 1, {args.warmup} warm-up call(s), {args.seconds:g} s of audio per call, median of {args.rounds} "
        f"rounds{slow_note}; load average {os.getloadavg()[0]:.1f}"
    )


def _x(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _ratio(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}x"


def _cell(row: Optional[Row]) -> str:
    """x real time of a backend's row; ``-`` where it was not run, ``failed`` where it could not be prepared."""
    if row is None:
        return "-"
    return "failed" if row.error else _x(row.x_realtime)


def detail_table(rows: list[Row]) -> str:
    eager = {r.model: r.median for r in rows if r.backend == "eager" and r.times}
    lines = [
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
            f"{r.x_realtime:.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def summary_table(rows: list[Row]) -> str:
    """One row per model (and one for Vocos' ONNX-form ISTFT): x real time per backend, and the ratios."""
    by_model: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_model.setdefault(r.model, {})[r.backend] = r
    reference = by_model.get(REFERENCE, {}).get("eager")
    reference_rtf = reference.rtf if reference is not None and reference.times else math.nan
    lines = [
        "| model | params | x real time eager | torch.compile | ONNX Runtime | ORT/eager | vs HiFi-GAN V1 "
        "| published anchor |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model, found in by_model.items():
        failed = found.get("-")
        if failed is not None:
            lines.append(f"| `{model}` | | {failed.error} | | | | | |")
            continue
        eager = found.get("eager")
        params = next(iter(found.values())).params_m
        ort = [r for b, r in found.items() if b.startswith("onnxruntime") and r.times]
        best_ort = min(ort, key=lambda r: r.median) if ort else None
        ort_ratio = _ratio(eager.median / best_ort.median) if best_ort else ""
        params = f"{params:.1f} M" if params >= 1 else f"{params:.2f} M"
        lines.append(
            f"| `{model}` | {params} | {_cell(eager)} | {_cell(found.get('compile'))} | "
            f"{_cell(best_ort or found.get('onnxruntime'))} | {ort_ratio} | {_ratio(reference_rtf / eager.rtf)} | "
            f"{ANCHORS.get(model, '')} |"
        )
        for backend, label in LABELS.items():
            variant = found.get(backend)
            if variant is not None and variant.times:
                lines.append(
                    f"| `{model}` ({label}) | {params} | {_cell(variant)} | | | | "
                    f"{_ratio(reference_rtf / variant.rtf)} | |"
                )
    lines += ["", "ONNX Runtime: its fastest graph optimisation level in the run.", FOOTNOTES]
    lines += [f"{r.model} {r.backend} failed: {r.error}" for r in rows if r.error and r.backend != "-"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="conf/model presets to time (default: all)")
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "onnxruntime", "stream"],
                        choices=["eager", "compile", "onnxruntime", "stream"], help="eager always runs")
    parser.add_argument("--chunk-frames", type=int, default=32, help="frames per chunk of the stream backend")
    parser.add_argument("--ort-levels", nargs="+", default=["basic", "all"],
                        choices=["disable", "basic", "extended", "all"])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per call (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default: %(default)s)")
    parser.add_argument("--slow-seconds", type=float, default=3.0,
                        help=f"audio per call of {', '.join(sorted(SLOW))} (default: %(default)s)")
    parser.add_argument("--slow-rounds", type=int, default=2,
                        help=f"timed rounds of {', '.join(sorted(SLOW))} (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ONNX Runtime runs on the CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="narrow models, 0.2 s of audio, 1 warm-up and 1 timed call, no compile: checks the script runs")
    parser.add_argument("--markdown", action="store_true", help="print only the per-model table (for the README)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.slow_seconds, args.rounds, args.slow_rounds, args.warmup = 0.2, 0.2, 1, 1, 1
    if REFERENCE not in args.models:
        print(f"note: {REFERENCE} is not among --models, so the 'vs HiFi-GAN V1' column is empty", file=sys.stderr)
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for name in args.models:
        start = time.perf_counter()
        try:
            rows.extend(bench_model(name, args))
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(name, "-", math.nan, seconds_for(name, args), error=f"failed: {_error(exc)}"))
        print(f"done: {name} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    print(settings(args))
    print()
    if not args.markdown:
        print(detail_table(rows))
        print()
    print(summary_table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
