"""``python -m melvoc.data.check SOURCE [--sampling-rate N]``: scan a dataset before training on it.

Reads every file of a filelist, ``metadata.csv`` or folder (as :func:`melvoc.data.sources.read_source`
does for training) and prints: file count, total hours, sample rates, channels, formats,
min/median/max duration, clipped and silent files, files shorter than a training segment, and the
unusable files (missing, unreadable, empty, NaN/inf, wrong rate with ``--no-resample``) with reasons.
The exit code is 1 when any file is unusable, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from melvoc.data.io import AudioDataError, AudioInfo, read_mono, audio_info
from melvoc.data.sources import AudioEntry, read_source

__all__ = ["FileReport", "check_file", "main", "summarize"]

# |x| at or above this counts as a full-scale sample; a file with more than _CLIP_COUNT is "clipped".
_CLIP_LEVEL = 0.999
_CLIP_COUNT = 10
# Peak below -60 dBFS: "silent".
_SILENT_PEAK = 1e-3


@dataclass
class FileReport:
    """What the scan found about one file."""

    entry: AudioEntry
    info: Optional[AudioInfo] = None
    error: Optional[str] = None
    peak: float = 0.0
    clipped_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.error is None


def check_file(entry: AudioEntry, sampling_rate: Optional[int] = None, resample: bool = True) -> FileReport:
    """Read one file completely and report on it (never raises for a bad file)."""
    report = FileReport(entry)
    try:
        info = audio_info(entry.path)
        report.info = info
        audio = read_mono(info, 0, info.frames)
    except AudioDataError as exc:
        report.error = str(exc)
        return report
    finite = np.isfinite(audio)
    if not finite.all():
        report.error = f"{entry.path}: {int((~finite).sum())} NaN/inf sample(s)"
        return report
    if sampling_rate is not None and info.sampling_rate != sampling_rate and not resample:
        report.error = f"{entry.path}: {info.sampling_rate} Hz, expected {sampling_rate} Hz"
        return report
    magnitude = np.abs(audio)
    report.peak = float(magnitude.max())
    report.clipped_samples = int(np.count_nonzero(magnitude >= _CLIP_LEVEL))
    return report


def summarize(
    source: str,
    reports: Sequence[FileReport],
    sampling_rate: Optional[int] = None,
    segment_size: Optional[int] = None,
    show: int = 10,
) -> str:
    """The printed summary of a scan."""
    usable = [r for r in reports if r.usable and r.info is not None]
    bad = [r for r in reports if not r.usable]
    lines = [f"melvoc data check: {source}"]

    def row(label: str, value: str) -> None:
        lines.append(f"{label:<22}{value}")

    def names(items: Sequence[FileReport]) -> str:
        shown = ", ".join(str(r.entry.path) for r in items[:show])
        return shown + (f", ... (+{len(items) - show})" if len(items) > show else "")

    row("files", f"{len(reports)} ({len(usable)} usable, {len(bad)} unusable)")
    if usable:
        infos = [r.info for r in usable if r.info is not None]
        seconds = np.array([i.seconds for i in infos])
        row("total", f"{seconds.sum() / 3600:.3f} h ({seconds.sum():.1f} s)")
        rates = Counter(i.sampling_rate for i in infos)
        rate_text = ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(rates.items()))
        if sampling_rate is not None:
            other = sum(n for rate, n in rates.items() if rate != sampling_rate)
            if other:
                rate_text += f"  ({other} will be resampled to {sampling_rate} Hz)"
        row("sample rates", rate_text)
        row("channels", ", ".join(f"{c}: {n}" for c, n in sorted(Counter(i.channels for i in infos).items())))
        formats = Counter(f"{i.format}/{i.subtype}" for i in infos)
        row("formats", ", ".join(f"{k}: {n}" for k, n in sorted(formats.items())))
        row(
            "duration",
            f"min {seconds.min():.2f} s, median {np.median(seconds):.2f} s, max {seconds.max():.2f} s",
        )
        clipped = [r for r in usable if r.clipped_samples > _CLIP_COUNT]
        row("clipped", f"{len(clipped)}" + (f": {names(clipped)}" if clipped else ""))
        silent = [r for r in usable if r.peak < _SILENT_PEAK]
        row("silent (< -60 dBFS)", f"{len(silent)}" + (f": {names(silent)}" if silent else ""))
        if segment_size is not None:
            rate = sampling_rate
            short = [
                r for r in usable if r.info is not None
                and r.info.seconds * (rate or r.info.sampling_rate) < segment_size
            ]
            where = f"{segment_size} samples" + (f" at {rate} Hz" if rate else "")
            row("shorter than segment", f"{len(short)} (< {where})" + (f": {names(short)}" if short else ""))
    if bad:
        lines.append(f"unusable files ({len(bad)}):")
        lines.extend(f"  {r.error}" for r in bad[:show])
        if len(bad) > show:
            lines.append(f"  ... and {len(bad) - show} more")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.data.check",
        description="Scan a filelist, metadata.csv or folder of audio and summarise it.",
    )
    parser.add_argument("source", help="filelist (path|...), metadata.csv, or a folder of audio files")
    parser.add_argument("--root", default=None, help="folder that relative filelist paths resolve against")
    parser.add_argument("--sampling-rate", type=int, default=None, help="the rate you will train at (Hz)")
    parser.add_argument("--segment-size", type=int, default=8192, help="training crop in samples (default 8192)")
    parser.add_argument("--no-resample", action="store_true", help="count files at another rate as unusable")
    parser.add_argument("--workers", type=int, default=4, help="files read in parallel (default 4)")
    parser.add_argument("--show", type=int, default=10, help="names listed per category (default 10)")
    args = parser.parse_args(argv)

    try:
        entries = read_source(args.source, args.root)
    except AudioDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        reports = list(
            tqdm(
                pool.map(lambda e: check_file(e, args.sampling_rate, not args.no_resample), entries),
                total=len(entries),
                desc="checking",
                unit="file",
            )
        )
    print(summarize(args.source, reports, args.sampling_rate, args.segment_size, args.show))
    return 1 if any(not r.usable for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
