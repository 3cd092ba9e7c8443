"""``python -m melvoc.identify MELS... [--audio AUDIO...] [--json OUT]``: which parameters made these mels?

The command around :func:`melvoc.matching.identify.identify`: it reads the mel and audio files, prints
the report and writes the JSON. Exit codes of the command: 0 reproduced (or, without audio, reported), 1 nothing reproduces the
mels within tolerance, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from melvoc.features.mel_files import read_mel_file
from melvoc.features.presets import hydra_value, load_presets
from melvoc.features.statistics import floor_text, mel_array
from melvoc.matching.identify import DEFAULT_TOLERANCE, Identification, UsageError, identify

__all__ = ["format_report", "main"]

_LISTED = 8  # candidates printed (the JSON has them all)


def _read_mel(path: Path) -> np.ndarray:
    """A mel file, ``.npy`` or else ``torch.save``d, as ``(num_mels, frames)``: float32 stays float32
    (the precision the verification runs in), other dtypes become float64."""
    try:
        mel = read_mel_file(path)
    except ValueError as error:
        raise UsageError(str(error)) from error
    return mel_array(mel, str(path), keep_precision=True)


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float64 samples and the file's rate."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as error:
        raise UsageError(f"{path}: unreadable audio ({type(error).__name__}: {error})") from error
    if audio.shape[0] == 0:
        raise UsageError(f"{path}: no audio samples")
    return audio.mean(axis=1), int(rate)


def _pair_files(mel_paths: Sequence[Path], audio_paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Audio pairs with mels by stem, else by order."""
    by_stem = {p.stem: p for p in audio_paths}
    if len(by_stem) == len(audio_paths) and all(m.stem in by_stem for m in mel_paths):
        return [(m, by_stem[m.stem]) for m in mel_paths]
    if len(mel_paths) != len(audio_paths):
        raise UsageError(
            f"{len(mel_paths)} mel file(s) and {len(audio_paths)} audio file(s) whose stems do not all match: "
            "give one audio file per mel, with the same stem or in the same order"
        )
    return list(zip(mel_paths, audio_paths))


def _config_text(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {hydra_value(value)}" for key, value in config.items())


def format_report(result: Identification, mel_count: int, audio_note: str) -> str:
    """The human-readable report."""
    lines = [f"identify: {mel_count} mel file(s), {result.statistics.num_mels} mel bands; {audio_note}"]
    stats = result.statistics
    if result.max_error is not None:
        verdict = "reproduced" if result.reproduces else "NOT reproduced by any config searched"
        lines.append(f"{verdict}: max error {result.max_error:.3g} (tolerance {result.tolerance:g})")
        label = "config" if result.reproduces else "best config"
        lines.append(f"{label}: {_config_text(result.config)}")
        lines.append(f"closest preset: {result.preset or '-'}")
        lines.append(f"override: {result.override}")
        if result.candidates:
            lines.append("also within tolerance:" if result.reproduces else "next best candidates:")
            for c in result.candidates[:_LISTED]:
                lines.append(f"  max error {c.max_error:.3g}: {c.override}")
            if len(result.candidates) > _LISTED:
                lines.append(f"  ... and {len(result.candidates) - _LISTED} more (--json lists them all)")
        if result.open:
            lines.append("left open by these mels and audio:")
            lines.extend(f"  {note}" for note in result.open)
        return "\n".join(lines)
    lines.append(f"num_mels: {stats.num_mels}; values {stats.minimum:.4g}..{stats.maximum:.4g}")
    if stats.floor is not None:
        lines.append(f"log floor reached at {floor_text(stats.floor)}"
                     + (f": log_base {stats.log_base}, clip_val {stats.clip_val:g}" if stats.clip_val else
                        " (not a round clip value in ln, log10 or dB)"))
    elif stats.floor_per_band is not None:
        lines.append(f"floor reached per band at {stats.floor_per_band.min():.2f}..{stats.floor_per_band.max():.2f}: "
                     "a magnitude floor sqrt(eps) (VITS-style eps 1e-6), the log clamp not reached")
    else:
        lines.append("no log floor reached (no silence): the floor and log base stay open")
    lines.append(f"normalisation: {stats.normalisation or 'no sign of per-bin mean/variance or dB scaling'}")
    lines.append(f"presets consistent with this: {', '.join(c.preset or '' for c in result.candidates) or '-'}")
    lines.append(f"override: {result.override}")
    lines.append(f"left open (give --audio to fit them): {', '.join(result.open)}")
    return "\n".join(lines)


def _identify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.identify",
        description="Find the MelConfig (and the closest preset) that made these mel files.",
        epilog="exit codes: 0 reproduced (or, without --audio, reported), 1 nothing reproduces the mels, 2 usage error",
    )
    parser.add_argument("mels", nargs="+", type=Path, metavar="MELS",
                        help=".npy/.pt log-mels, (num_mels, frames) or (1, num_mels, frames)")
    parser.add_argument("--audio", nargs="+", type=Path, default=None, metavar="AUDIO",
                        help="the audio the mels were made from (paired by stem, else by order)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the result as JSON")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max abs error (mels' units) that counts as reproduced (default %(default)g)")
    parser.add_argument("--conf-dir", default=None, help="folder of preset YAML files (default: conf/features)")
    return parser


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: such numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m melvoc.identify``; returns the exit code."""
    args = _identify_parser().parse_args(argv)
    # The search is thousands of small matrix products: extra threads only contend for the cores.
    torch.set_num_threads(1)
    try:
        presets = load_presets(args.conf_dir)
        mel_paths = list(args.mels)
        for path in mel_paths + list(args.audio or []):
            if not path.is_file():
                raise UsageError(f"{path}: file not found")
        if args.audio:
            pairs = _pair_files(mel_paths, args.audio)
            mels = [_read_mel(m) for m, _ in pairs]
            audios = [_read_audio(a) for _, a in pairs]
            note = f"{len(audios)} audio file(s) at {audios[0][1]} Hz"
        else:
            mels, audios, note = [_read_mel(m) for m in mel_paths], None, "no audio"
        result = identify(mels, audios, presets=presets, tolerance=args.tolerance)
    except ValueError as error:  # UsageError, PresetError, unreadable or misshapen files
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(result, len(mel_paths), note))
    if args.json is not None:
        args.json.write_text(json.dumps(_finite(result.to_json()), indent=2) + "\n")
    if result.max_error is not None and not result.reproduces:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
