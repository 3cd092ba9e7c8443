"""Check that :mod:`melvoc.compat` reproduces *your* copy of ``mel_processing.py``.

Usage::

    python -m melvoc.compare --reference path/to/mel_processing.py [--preset NAME_OR_YAML ...]
                             [--device cpu] [--repeat N] [--conf-dir conf/features]

The legacy module is imported from its path and its functions (``spectrogram_torch``,
``spec_to_mel_torch``, ``mel_spectrogram_torch``, ``dynamic_range_(de)compression_torch``,
``spectral_(de_)normalize_torch``; missing ones are skipped with a note) run next to melvoc.compat's
on the same deterministic audio (in [-1, 1], with a stretch of digital silence; several batch sizes
and lengths), in float32 and float64, with the numbers of each feature preset. The table shows the
largest difference per function, the tolerance it is held to and the speed ratio (legacy time /
melvoc time, best of ``--repeat`` interleaved measurements; melvoc.compat keeps its range check
on, as a drop-in would, and the legacy functions do their own). The exit code is 1 when any function differs beyond tolerance
or fails, 2 on a usage error.

Tolerances: log outputs (mel, ``dynamic_range_compression``) absolute, linear outputs
(spectrogram, decompression) relative to the reference's peak: float64 1e-10, float32 1e-5.

Presets come from ``conf/features/*.yaml`` (``--conf-dir``, else ``./conf/features``, else the
repository that holds this package); without a ``conf/`` (a wheel install) a built-in copy of the
preset table is used. ``--preset`` also takes a path to a YAML file with MelConfig fields. Only
presets the legacy signature can express are run: reflect pre-pad, slaney filterbank, natural log
with floor 1e-5. The legacy functions have their magnitude epsilon built in (1e-6 in VITS), as has
melvoc.compat, so a preset's ``eps`` plays no part here.

The original caches its filterbank by ``fmax`` alone; this tool clears the legacy module's
``mel_basis``/``hann_window`` dicts before each preset so that it is not compared against a stale
filterbank of the previous one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import torch
from torch import Tensor

from melvoc import compat
from melvoc.features import MelConfig, min_audio_length

__all__ = ["FALLBACK_PRESETS", "Row", "find_conf_dir", "load_legacy", "load_presets", "main", "run_comparison"]

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

# Mirrors conf/features/*.yaml (a test keeps the two in step); used only where conf/ is absent.
FALLBACK_PRESETS: dict[str, dict[str, Any]] = {
    "vits_22k": dict(sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, num_mels=80,
                     fmin=0.0, fmax=None, eps=1e-6),
    "hifigan_22k": dict(sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, num_mels=80,
                        fmin=0.0, fmax=8000.0, eps=1e-9),
    "sovits_44k": dict(sampling_rate=44100, n_fft=2048, hop_size=512, win_size=2048, num_mels=80,
                       fmin=0.0, fmax=22050.0, eps=1e-6),
    "bigvgan_24k": dict(sampling_rate=24000, n_fft=1024, hop_size=256, win_size=1024, num_mels=100,
                        fmin=0.0, fmax=12000.0, eps=1e-9),
    "bigvgan_44k": dict(sampling_rate=44100, n_fft=2048, hop_size=512, win_size=2048, num_mels=128,
                        fmin=0.0, fmax=None, eps=1e-9),
    "vocos_24k": dict(sampling_rate=24000, n_fft=1024, hop_size=256, win_size=1024, num_mels=100,
                      fmin=0.0, fmax=None, center=True, eps=0.0, clip_val=1e-7, pad_mode="none",
                      mel_scale="htk", mel_norm=None),
}

FUNCTIONS = (
    "mel_spectrogram_torch",
    "spectrogram_torch",
    "spec_to_mel_torch",
    "dynamic_range_compression_torch",
    "dynamic_range_decompression_torch",
    "spectral_normalize_torch",
    "spectral_de_normalize_torch",
)
_LEGACY_CACHES = ("mel_basis", "hann_window")
# melvoc.compat builds MelConfigs with the default (VITS) magnitude epsilon.
_COMPAT_EPS = next(field.default for field in dataclasses.fields(MelConfig) if field.name == "eps")


class UsageError(Exception):
    """A bad command line: unknown preset, unreadable reference module, ..."""


@dataclass
class Row:
    """One line of the table: a function on one preset and dtype."""

    preset: str
    function: str
    dtype: str
    max_abs_diff: Optional[float] = None
    error: Optional[float] = None
    kind: str = "abs"
    tolerance: float = 0.0
    ok: bool = False
    speed_ratio: Optional[float] = None
    note: str = ""


_module_counter = itertools.count()


def load_legacy(path: str | Path) -> ModuleType:
    """Import a Python file as a fresh module with a unique name (its folder is importable meanwhile)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"--reference {path}: no such file (give the path of your mel_processing.py)")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"melvoc_legacy_{digest}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--reference {path}: not importable as a Python module (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise UsageError(f"--reference {path}: importing it failed: {type(error).__name__}: {error}") from error
    finally:
        sys.path.remove(str(path.parent))
    return module


def find_conf_dir(explicit: str | Path | None = None) -> Optional[Path]:
    """The ``conf/features`` folder: ``explicit``, else under the cwd, else in this package's repository."""
    if explicit is not None:
        folder = Path(explicit)
        if not folder.is_dir():
            raise UsageError(f"--conf-dir {folder}: not a directory (expected conf/features)")
        return folder
    for folder in (Path.cwd() / "conf" / "features", Path(__file__).resolve().parents[2] / "conf" / "features"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def _read_yaml(path: Path) -> MelConfig:
    from omegaconf import OmegaConf

    try:
        return MelConfig.coerce(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except Exception as error:  # YAML syntax, interpolation or MelConfig validation errors alike
        raise UsageError(f"{path}: not a valid MelConfig preset: {error}") from error


def available_presets(conf_dir: Optional[Path]) -> dict[str, Callable[[], MelConfig]]:
    """Preset name -> loader, from ``conf_dir`` or, where that is None, the built-in table."""
    if conf_dir is None:
        return {name: (lambda fields=fields: MelConfig(**fields)) for name, fields in FALLBACK_PRESETS.items()}
    return {path.stem: (lambda path=path: _read_yaml(path)) for path in sorted(conf_dir.glob("*.yaml"))}


def legacy_incompatibility(config: MelConfig) -> list[str]:
    """Why the legacy signature cannot express ``config`` (empty when it can)."""
    fixed = {"pad_mode": "reflect", "mel_scale": "slaney", "mel_norm": "slaney", "log_base": "e", "clip_val": 1e-5}
    return [f"{key}={getattr(config, key)!r}" for key, value in fixed.items() if getattr(config, key) != value]


def load_presets(
    requested: Sequence[str] | None, conf_dir: Optional[Path]
) -> tuple[list[tuple[str, MelConfig]], list[str]]:
    """Resolve ``--preset`` values (names or YAML paths) to configs; the notes say what was skipped."""
    table = available_presets(conf_dir)
    notes: list[str] = []
    chosen: list[tuple[str, MelConfig]] = []
    for entry in requested or sorted(table):
        path = Path(entry)
        if entry in table:
            name, config = entry, table[entry]()
        elif path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise UsageError(f"--preset {entry}: no such file")
            name, config = path.stem, _read_yaml(path)
        else:
            source = str(conf_dir) if conf_dir is not None else "the built-in table"
            raise UsageError(f"--preset {entry}: unknown; available in {source}: {', '.join(sorted(table))}")
        reasons = legacy_incompatibility(config)
        if reasons:
            notes.append(f"preset {name} skipped: the legacy signature cannot express {', '.join(reasons)}")
            continue
        if config.eps != _COMPAT_EPS:
            notes.append(
                f"preset {name} has eps={config.eps:g}, which is no legacy argument: both sides use "
                f"their built-in magnitude epsilon (melvoc.compat: {_COMPAT_EPS:g}, as VITS)"
            )
        chosen.append((name, config))
    return chosen, notes


def make_audio(config: MelConfig, seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Deterministic test signals in [-0.95, 0.95]: sines + noise with a stretch of digital silence.

    Three cases: one 1 s clip, a batch of 4 odd-length clips, a batch of 2 near the minimum length.
    """
    generator = torch.Generator().manual_seed(seed)
    shortest = max(min_audio_length(config), config.n_fft) + 3 * config.hop_size + 1
    cases = [(1, config.sampling_rate), (4, 16 * config.hop_size + 37), (2, shortest)]
    audio = []
    for batch, length in cases:
        t = torch.arange(length, dtype=torch.float64) / config.sampling_rate
        freqs = 50.0 + torch.rand(batch, 3, 1, generator=generator, dtype=torch.float64) * (config.f_max - 50.0)
        phases = torch.rand(batch, 3, 1, generator=generator, dtype=torch.float64) * 2 * math.pi
        signal = torch.sin(2 * math.pi * freqs * t + phases).sum(1)
        signal = signal + 0.5 * torch.randn(batch, length, generator=generator, dtype=torch.float64)
        silent = slice(length // 3, length // 3 + min(length // 4, 2 * config.n_fft))
        signal[:, silent] = 0.0
        signal = 0.95 * signal / signal.abs().amax(dim=-1, keepdim=True)
        audio.append(signal.to(device=device, dtype=dtype))
    return audio


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _speed_ratio(
    legacy_fn: Callable[[], Any], melvoc_fn: Callable[[], Any], repeat: int, device: torch.device
) -> Optional[float]:
    """Legacy time / melvoc time, best of ``repeat`` interleaved measurements (so both see the same
    machine load); quick functions are looped until one measurement takes >= 20 ms."""
    if repeat <= 0:
        return None
    number = 1
    while True:
        elapsed = _measure(legacy_fn, number, device)
        if elapsed >= 0.02 or number >= 1024:
            break
        number *= 4 if elapsed < 0.005 else 2
    legacy_best, melvoc_best = elapsed, math.inf
    for index in range(repeat):
        melvoc_best = min(melvoc_best, _measure(melvoc_fn, number, device))
        if index:
            legacy_best = min(legacy_best, _measure(legacy_fn, number, device))
    return legacy_best / melvoc_best if melvoc_best > 0 else None


def _measure(fn: Callable[[], Any], number: int, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _synchronize(device)
    return time.perf_counter() - start


def _clear_legacy_caches(legacy: ModuleType) -> None:
    for name in _LEGACY_CACHES:
        cache = getattr(legacy, name, None)
        if isinstance(cache, dict):
            cache.clear()


def _compare_one(
    row: Row,
    legacy_fn: Callable[[], list[Tensor]],
    melvoc_fn: Callable[[], list[Tensor]],
    repeat: int,
    device: torch.device,
) -> Row:
    try:
        expected = legacy_fn()
    except Exception as error:
        row.note = f"legacy raised {type(error).__name__}: {error}"
        return row
    try:
        actual = melvoc_fn()
    except Exception as error:
        row.note = f"melvoc raised {type(error).__name__}: {error}"
        return row
    max_abs, error = 0.0, 0.0
    for ref, out in zip(expected, actual):
        if tuple(ref.shape) != tuple(out.shape):
            row.note = f"shape {tuple(out.shape)} != legacy {tuple(ref.shape)}"
            return row
        diff = (out.double() - ref.double()).abs()
        if not torch.isfinite(diff).all():
            # Equal infinities (log of exact zeros) count as equal; anything else non-finite fails.
            same = (out.double() == ref.double()) | (out.isnan() & ref.isnan())
            if not bool(same[~torch.isfinite(diff)].all()):
                row.note = "non-finite values differ"
                return row
            diff = torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff))
        worst = float(diff.max()) if diff.numel() else 0.0
        max_abs = max(max_abs, worst)
        if row.kind == "rel":
            scale = float(ref.double().abs().max()) if ref.numel() else 0.0
            worst = worst / scale if scale > 0 else worst
        error = max(error, worst)
    row.max_abs_diff, row.error = max_abs, error
    row.ok = error <= row.tolerance
    row.speed_ratio = _speed_ratio(legacy_fn, melvoc_fn, repeat, device)
    return row


def run_comparison(
    legacy: ModuleType,
    presets: Sequence[tuple[str, MelConfig]],
    device: str | torch.device = "cpu",
    repeat: int = 5,
    seed: int = 0,
) -> tuple[list[Row], list[str]]:
    """Run every legacy function present against melvoc.compat; returns the table rows and notes."""
    device = torch.device(device)
    present = [name for name in FUNCTIONS if callable(getattr(legacy, name, None))]
    notes = [f"legacy module has no {name}: skipped" for name in FUNCTIONS if name not in present]
    rows: list[Row] = []
    dtypes = (torch.float32, torch.float64)
    for preset, config in presets:
        _clear_legacy_caches(legacy)
        mel_args = (config.n_fft, config.num_mels, config.sampling_rate, config.hop_size,
                    config.win_size, config.fmin, config.fmax, config.center)
        spec_args = (config.n_fft, config.sampling_rate, config.hop_size, config.win_size, config.center)
        bank_args = (config.n_fft, config.num_mels, config.sampling_rate, config.fmin, config.fmax)
        for dtype in dtypes:
            audio = make_audio(config, seed, dtype, device)
            tol = TOLERANCE[dtype]
            dtype_name = str(dtype).removeprefix("torch.")
            if "mel_spectrogram_torch" in present:
                rows.append(_compare_one(
                    Row(preset, "mel_spectrogram_torch", dtype_name, tolerance=tol),
                    lambda: [legacy.mel_spectrogram_torch(y, *mel_args) for y in audio],
                    lambda: [compat.mel_spectrogram_torch(y, *mel_args) for y in audio],
                    repeat, device,
                ))
            if "spectrogram_torch" in present:
                rows.append(_compare_one(
                    Row(preset, "spectrogram_torch", dtype_name, kind="rel", tolerance=tol),
                    lambda: [legacy.spectrogram_torch(y, *spec_args) for y in audio],
                    lambda: [compat.spectrogram_torch(y, *spec_args) for y in audio],
                    repeat, device,
                ))
            if "spec_to_mel_torch" in present:
                # The same linear spectrogram goes into both, so only the filterbank step is compared.
                try:
                    make_spec = legacy.spectrogram_torch if "spectrogram_torch" in present else compat.spectrogram_torch
                    specs = [make_spec(y, *spec_args) for y in audio]
                except Exception:
                    specs = [compat.spectrogram_torch(y, *spec_args) for y in audio]
                rows.append(_compare_one(
                    Row(preset, "spec_to_mel_torch", dtype_name, tolerance=tol),
                    lambda: [legacy.spec_to_mel_torch(s, *bank_args) for s in specs],
                    lambda: [compat.spec_to_mel_torch(s, *bank_args) for s in specs],
                    repeat, device,
                ))
    rows.extend(_compare_compression(legacy, present, dtypes, repeat, device, seed))
    return rows, notes


def _compare_compression(
    legacy: ModuleType, present: list[str], dtypes: Sequence[torch.dtype], repeat: int,
    device: torch.device, seed: int,
) -> list[Row]:
    generator = torch.Generator().manual_seed(seed + 1)
    # Magnitudes over 12 decades, with zeros and values under the 1e-5 floor; logs over the mel range.
    magnitudes = torch.cat([torch.zeros(4), 10 ** (torch.rand(4096, generator=generator, dtype=torch.float64) * 12 - 8)])
    logs = torch.rand(4096, generator=generator, dtype=torch.float64) * 19 - 12
    calls = {
        "dynamic_range_compression_torch": ((magnitudes, ()), (magnitudes, (10,)), (magnitudes, (1, 1e-7))),
        "spectral_normalize_torch": ((magnitudes, ()),),
        "dynamic_range_decompression_torch": ((logs, ()), (logs, (10,))),
        "spectral_de_normalize_torch": ((logs, ()),),
    }
    rows = []
    for name, cases in calls.items():
        if name not in present:
            continue
        kind = "rel" if name in ("dynamic_range_decompression_torch", "spectral_de_normalize_torch") else "abs"
        for dtype in dtypes:
            inputs = [(x.to(device=device, dtype=dtype), args) for x, args in cases]
            rows.append(_compare_one(
                Row("-", name, str(dtype).removeprefix("torch."), kind=kind, tolerance=TOLERANCE[dtype]),
                lambda name=name, inputs=inputs: [getattr(legacy, name)(x, *args) for x, args in inputs],
                lambda name=name, inputs=inputs: [getattr(compat, name)(x, *args) for x, args in inputs],
                repeat, device,
            ))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table."""
    header = ("preset", "function", "dtype", "max abs diff", "error", "tolerance", "result", "legacy/melvoc time")
    lines = [header]
    for row in rows:
        lines.append((
            row.preset,
            row.function,
            row.dtype,
            "-" if row.max_abs_diff is None else f"{row.max_abs_diff:.3g}",
            "-" if row.error is None else f"{row.error:.3g} ({row.kind})",
            f"{row.tolerance:.0e}",
            "pass" if row.ok else f"FAIL{': ' + row.note if row.note else ''}",
            "-" if row.speed_ratio is None else f"{row.speed_ratio:.2f}x",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.compare",
        description="Compare a legacy mel_processing.py with melvoc.compat on the same audio.",
    )
    parser.add_argument("--reference", required=True, help="path of the legacy mel_processing.py")
    parser.add_argument(
        "--preset", action="append", default=None,
        help="feature preset name (conf/features) or YAML path; repeatable (default: every preset "
             "the legacy signature can express)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timing measurements per function, best kept (0: no timing)")
    parser.add_argument("--conf-dir", default=None, help="folder of preset YAML files (default: conf/features)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test audio")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m melvoc.compare``; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.repeat < 0:
        print("error: --repeat must be >= 0", file=sys.stderr)
        return 2
    try:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise UsageError(f"--device {args.device}: {error}") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available here (use --device cpu)")
        legacy = load_legacy(args.reference)
        conf_dir = find_conf_dir(args.conf_dir)
        presets, notes = load_presets(args.preset, conf_dir)
        if not presets:
            raise UsageError("no preset left to compare: " + "; ".join(notes))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    source = conf_dir if conf_dir is not None else "built-in table (no conf/features found)"
    print(f"legacy: {Path(args.reference).resolve()}")
    print(f"presets: {', '.join(name for name, _ in presets)} from {source}; device {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows, run_notes = run_comparison(legacy, presets, device=device, repeat=args.repeat, seed=args.seed)
    print(format_table(rows))
    for note in notes + run_notes:
        print(f"note: {note}")
    failed = [row for row in rows if not row.ok]
    if not rows:
        print("FAILED: the legacy module has none of the functions to compare")
        return 1
    if failed:
        print(f"FAILED: {len(failed)} of {len(rows)} comparisons beyond tolerance or in error")
        return 1
    print(f"OK: all {len(rows)} comparisons within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
