"""Score vocoded audio against references: ``python -m melvoc.evaluate REFERENCE --predicted PRED ...``.

    python -m melvoc.evaluate refs/ --predicted hifigan/ --predicted bigvgan/ --json scores.json --report ab.html
    python -m melvoc.evaluate val.txt --checkpoint last.ckpt --metrics pesq,mstft

``REFERENCE`` is a folder of audio files (searched recursively), a filelist (``path|...`` per line) or
an LJSpeech ``metadata.csv``; each ``--predicted`` folder holds one file per reference with the same
stem. ``--checkpoint`` first vocodes every reference with a trained generator (copy-synthesis: the
reference's log-mel with the checkpoint's features, as ``python -m melvoc.synthesize`` does) and
scores that as one more set. Each pair is scored at the reference file's rate (or ``--sampling-rate``),
predictions resampled with soxr; lengths are trimmed to the shorter, with a warning when they differ
by more than one hop. Missing pairs, unreadable or empty files and silent references are reported
together, before anything is scored.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from melvoc.data.io import AudioDataError, AudioInfo, audio_info, problem_listing, read_audio
from melvoc.data.sources import read_source
from melvoc.metrics import (
    CREPE_MODELS,
    DEFAULT_METRICS,
    HIGHER_IS_BETTER,
    PITCH_METRICS,
    mean_ci95,
    parse_metrics,
    pitch_track,
    score,
)

__all__ = ["EvaluationError", "SetResult", "evaluate", "main", "to_json", "write_report", "format_table"]


#: One hop when no checkpoint says otherwise: HiFi-GAN's 256 samples (at the reference's rate).
DEFAULT_HOP = 256
_MAX_LISTED = 20


class EvaluationError(ValueError):
    """Inputs that cannot be scored; the message lists every problem and the fix."""


@dataclass
class SetResult:
    """The scores of one predicted set.

    Attributes:
        name: the set's name (its folder's name, or the checkpoint's stem).
        folder: where its files are.
        files: one dict per reference, ``{"name": stem, metric: value (NaN if unscorable)}``.
        paths: the predicted file of each reference stem.
    """

    name: str
    folder: Path
    files: list[dict[str, object]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{metric: {"mean", "ci95", "n"}}`` over the files with a finite value."""
        out = {}
        for name in metrics:
            mean, half, n = mean_ci95([float(f[name]) for f in self.files])  # type: ignore[arg-type]
            out[name] = {"mean": mean, "ci95": half, "n": n}
        return out


@dataclass(frozen=True)
class _Reference:
    name: str
    info: AudioInfo


def _scan(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Stem -> audio file of a predicted folder (duplicate stems and empty folders are problems)."""
    if not folder.is_dir():
        problems.append(f"{folder}: predicted folder not found")
        return {}
    try:
        entries = read_source(folder)
    except AudioDataError as error:
        problems.append(str(error))
        return {}
    by_stem: dict[str, list[Path]] = {}
    for entry in entries:
        by_stem.setdefault(entry.name, []).append(entry.path)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            problems.append(f"{folder}: {len(paths)} files with the stem {stem!r}: {', '.join(map(str, paths))}")
    return {stem: paths[0] for stem, paths in by_stem.items()}


def _references(reference: Path, problems: list[str]) -> tuple[list[_Reference], set[str]]:
    """The usable references, and the stems of all listed ones (usable or not)."""
    try:
        entries = read_source(reference)
    except AudioDataError as error:
        problems.append(str(error))
        return [], set()
    seen: dict[str, str] = {}
    refs = []
    for entry in entries:
        if entry.name in seen:
            problems.append(f"{entry.origin}: reference stem {entry.name!r} repeats {seen[entry.name]}")
            continue
        seen[entry.name] = entry.origin
        try:
            info = audio_info(entry.path)
            audio = read_audio(info, info.sampling_rate, resample=False)
        except AudioDataError as error:
            problems.append(str(error))
            continue
        if not np.any(audio):
            problems.append(f"{entry.path}: silent reference (all samples are 0); remove it from the list")
            continue
        refs.append(_Reference(entry.name, info))
    return refs, set(seen)


def _unique_names(folders: Sequence[Path]) -> list[str]:
    names = [folder.name or str(folder) for folder in folders]
    for depth in range(2, 6):
        if len(set(names)) == len(names):
            break
        names = ["/".join(folder.resolve().parts[-depth:]) for folder in folders]
    return names


def _check_predictions(refs: list[_Reference], stems: set[str], sets: list[SetResult], resample: bool,
                       problems: list[str]) -> dict[tuple[str, str], AudioInfo]:
    infos: dict[tuple[str, str], AudioInfo] = {}
    for result in sets:
        for ref in refs:
            path = result.paths.get(ref.name)
            if path is None:
                problems.append(f"{ref.info.path}: no prediction with the stem {ref.name!r} in {result.folder}")
                continue
            try:
                info = audio_info(path)
            except AudioDataError as error:
                problems.append(str(error))
                continue
            if info.sampling_rate != ref.info.sampling_rate and not resample:
                problems.append(
                    f"{path}: {info.sampling_rate} Hz, its reference {ref.info.path} is at "
                    f"{ref.info.sampling_rate} Hz (drop --no-resample to resample it with soxr)"
                )
                continue
            infos[(result.name, ref.name)] = info
        for stem, path in sorted(result.paths.items()):
            if stem not in stems:
                problems.append(f"{path}: no reference with the stem {stem!r}")
    return infos


def evaluate(
    reference: str | os.PathLike,
    predicted: Sequence[str | os.PathLike] = (),
    *,
    checkpoints: Sequence[str | os.PathLike] = (),
    metrics: Sequence[str] = DEFAULT_METRICS,
    sampling_rate: Optional[int] = None,
    hop_size: Optional[int] = None,
    resample: bool = True,
    pitch_model: str = "full",
    device: str = "cpu",
    synthesized_dir: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
) -> list[SetResult]:
    """Score each predicted set (folders, and copy-synthesis of each checkpoint) against ``reference``.

    Args:
        reference: folder, filelist or ``metadata.csv`` of reference audio.
        predicted: folders of predictions, paired with references by file stem.
        checkpoints: generators to copy-synthesize the references with first (one set each).
        metrics: names from :data:`melvoc.metrics.ALL_METRICS`.
        sampling_rate: score every pair at this rate (default: each reference file's own rate).
        hop_size: length difference (at the scoring rate) past which a pair warns; default the
            checkpoint's hop, else 256.
        resample: resample predictions at another rate than their reference (else an error).
        pitch_model: CREPE capacity for the pitch metrics.
        device: torch device for CREPE and synthesis.
        synthesized_dir: where copy-synthesis writes ``<checkpoint stem>/<stem>.wav`` (default: a
            temporary folder, removed before this returns, so the returned ``paths`` of those sets no
            longer exist: give a folder to keep them, e.g. for :func:`write_report`).
        progress: tqdm bars (``None``: only on a terminal).

    Returns:
        One :class:`SetResult` per set, folders first, in the given order.

    Raises:
        EvaluationError: every input problem at once, before anything is scored.
    """
    names = parse_metrics(metrics)
    if pitch_model not in CREPE_MODELS:
        raise EvaluationError(f"--pitch-model {pitch_model!r}: must be one of {', '.join(CREPE_MODELS)}")
    if not predicted and not checkpoints:
        raise EvaluationError("nothing to score: give --predicted FOLDER and/or --checkpoint CKPT")
    problems: list[str] = []
    refs, stems = _references(Path(reference).expanduser(), problems)
    folders = [Path(p).expanduser() for p in predicted]
    sets = [SetResult(name, folder) for name, folder in zip(_unique_names(folders), folders)]
    for result in sets:
        result.paths = _scan(result.folder, problems)
    infos = _check_predictions(refs, stems, sets, resample, problems)
    if problems or not refs:
        raise EvaluationError(
            problem_listing(f"{len(problems)} problem(s) with the inputs", problems or ["no reference audio"],
                    "fix or remove these files; nothing was scored", _MAX_LISTED)
        )

    with tempfile.TemporaryDirectory(prefix="melvoc-evaluate-") as scratch:
        base = Path(synthesized_dir).expanduser() if synthesized_dir else Path(scratch)
        for checkpoint in checkpoints:
            result, hop = _copy_synthesis(Path(checkpoint), refs, base, {s.name for s in sets}, device, progress)
            hop_size = hop_size or hop
            for ref in refs:
                infos[(result.name, ref.name)] = audio_info(result.paths[ref.name])
            sets.append(result)
        _score_all(refs, sets, infos, names, sampling_rate, hop_size or DEFAULT_HOP, pitch_model, device, progress)
    return sets


def _copy_synthesis(checkpoint: Path, refs: list[_Reference], base: Path, taken: set[str], device: str,
                    progress: Optional[bool]) -> tuple[SetResult, int]:
    from melvoc.inference import load_generator
    from melvoc.synthesize import synthesize

    name = checkpoint.stem
    while name in taken:
        name += "_"
    output = base / name
    written = synthesize(checkpoint, [ref.info.path for ref in refs], output, device=device,
                         subtype="FLOAT", progress=progress)
    hop = load_generator(checkpoint, map_location="cpu").config.hop_size
    result = SetResult(name, output, paths={path.stem: path for path in written})
    return result, hop


def _score_all(refs: list[_Reference], sets: list[SetResult], infos: dict[tuple[str, str], AudioInfo],
               names: tuple[str, ...], sampling_rate: Optional[int], hop_size: int, pitch_model: str,
               device: str, progress: Optional[bool]) -> None:
    disable = None if progress is None else not progress
    trimmed: list[str] = []
    failures: list[str] = []
    pitched = [m for m in names if m in PITCH_METRICS]
    with tqdm(total=len(refs), unit="file", desc="evaluate", disable=disable) as bar:
        for ref in refs:
            rate = sampling_rate or ref.info.sampling_rate
            reference = read_audio(ref.info, rate)
            track = None
            if pitched:
                try:
                    track = pitch_track(reference, rate, model=pitch_model, device=device)
                except ValueError as error:
                    failures.append(f"{ref.info.path} (pitch): {error}")
            for result in sets:
                path = result.paths[ref.name]
                prediction = read_audio(infos[(result.name, ref.name)], rate)
                if abs(prediction.shape[0] - reference.shape[0]) > hop_size * rate / ref.info.sampling_rate:
                    trimmed.append(f"{path}: {prediction.shape[0]} samples, reference {reference.shape[0]}")
                n = min(prediction.shape[0], reference.shape[0])
                row: dict[str, object] = {"name": ref.name}
                groups = [(m,) for m in names if m not in PITCH_METRICS] + ([tuple(pitched)] if pitched and track else [])
                values: dict[str, float] = {}
                for group in groups:
                    try:
                        values.update(score(reference[:n], prediction[:n], rate, group, pitch_model=pitch_model,
                                            reference_track=track, device=device))
                    except ValueError as error:
                        failures.append(f"{path} ({', '.join(group)}): {error}")
                row.update({m: values.get(m, float("nan")) for m in names})
                result.files.append(row)
            bar.update(1)
    if trimmed:
        warnings.warn(
            problem_listing(f"{len(trimmed)} prediction(s) differ from their reference by more than one hop "
                    f"({hop_size} samples); trimmed to the shorter", trimmed,
                    "check that they were made from these references at this rate", _MAX_LISTED),
            UserWarning, stacklevel=3,
        )
    if failures:
        warnings.warn(
            problem_listing(f"{len(failures)} score(s) could not be computed (NaN, left out of the means)", failures,
                    "e.g. PESQ is undefined for silent audio", _MAX_LISTED),
            UserWarning, stacklevel=3,
        )


# --------------------------------------------------------------------------------------------------
# Output: table, JSON, HTML report
# --------------------------------------------------------------------------------------------------


def _nan_to_none(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(sets: Sequence[SetResult], metrics: Sequence[str]) -> dict[str, object]:
    """One set: ``{"metrics": {name: {"mean", "ci95", "n"}}, "files": [{"name", name: value}]}``;
    several: that object per set, keyed by set name. NaN is written as ``null``."""
    def one(result: SetResult) -> dict[str, object]:
        summary = {m: {k: _nan_to_none(v) for k, v in s.items()} for m, s in result.summary(metrics).items()}
        files = [{k: _nan_to_none(v) for k, v in row.items()} for row in result.files]
        return {"metrics": summary, "files": files}

    if len(sets) == 1:
        return one(sets[0])
    return {result.name: one(result) for result in sets}


def _cell(stats: dict[str, float]) -> str:
    if stats["n"] == 0:
        return "n/a (n=0)"
    ci = "" if not math.isfinite(stats["ci95"]) else f" ± {stats['ci95']:.3f}"
    return f"{stats['mean']:.3f}{ci} (n={stats['n']})"


def format_table(sets: Sequence[SetResult], metrics: Sequence[str]) -> str:
    """A plain-text table: a row per metric, a column per set, ``mean ± 95% CI (n=k)``."""
    summaries = [result.summary(metrics) for result in sets]
    header = ["metric"] + [result.name for result in sets]
    rows = [header] + [
        [f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}"] + [_cell(s[m]) for s in summaries] for m in metrics
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _wav_base64(audio: np.ndarray, rate: int) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _spectrogram_base64(audio: np.ndarray, rate: int) -> str:
    """A small log-magnitude STFT picture (dB, 80 dB range) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_fft = 1024 if rate <= 24000 else 2048
    window = np.hanning(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, n_fft // 2), n_fft)[:: n_fft // 4]
    db = 20 * np.log10(np.abs(np.fft.rfft(frames * window, axis=-1)).T + 1e-5)
    figure = Figure(figsize=(3.6, 1.5), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    ax = figure.subplots()
    top = float(db.max(initial=-100.0))
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
              extent=(0, audio.shape[0] / rate, 0, rate / 2000))
    ax.set_xlabel("s", fontsize=7)
    ax.set_ylabel("kHz", fontsize=7)
    ax.tick_params(labelsize=6)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}
th{background:#f2f2f2}
td.best{font-weight:bold;background:#e8f5e9}
.clip img{display:block;width:288px;height:120px}
.clip audio{width:288px;height:32px}
.vals{font-size:12px;color:#333}
"""


def write_report(path: str | os.PathLike, reference: str | os.PathLike, sets: Sequence[SetResult],
                 metrics: Sequence[str], *, sampling_rate: Optional[int] = None, media_files: int = 20) -> Path:
    """One self-contained HTML page: the metrics table, then per file the reference and each set side by
    side (audio players as base64 WAV, spectrograms as base64 PNG, the file's scores). Media for the
    first ``media_files`` files; every file's scores are listed."""
    path = Path(path).expanduser()
    summaries = [result.summary(metrics) for result in sets]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>melvoc evaluate</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>melvoc evaluate</h1><p>reference: <code>{html.escape(str(reference))}</code>; "
        f"{len(sets[0].files) if sets else 0} file(s); mean ± 95% CI (n)</p>",
        "<h2>Metrics</h2><table><tr><th>metric</th>",
        *[f"<th>{html.escape(r.name)}</th>" for r in sets],
        "</tr>",
    ]
    for m in metrics:
        means = [s[m]["mean"] for s in summaries]
        finite = [v for v in means if math.isfinite(v)]
        best = (max(finite) if HIGHER_IS_BETTER[m] else min(finite)) if len(finite) > 1 else None
        parts.append(f"<tr><th>{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}</th>")
        for s, mean in zip(summaries, means):
            css = " class='best'" if best is not None and mean == best else ""
            parts.append(f"<td{css}>{html.escape(_cell(s[m]))}</td>")
        parts.append("</tr>")
    parts.append("</table><h2>Files</h2><table><tr><th>file</th><th>reference</th>")
    parts += [f"<th>{html.escape(r.name)}</th>" for r in sets]
    parts.append("</tr>")
    references = {entry.name: entry.path for entry in read_source(Path(reference).expanduser())}
    for index, row in enumerate(sets[0].files if sets else []):
        stem = str(row["name"])
        parts.append(f"<tr><td>{html.escape(stem)}</td>")
        media = index < media_files
        info = audio_info(references[stem])
        rate = sampling_rate or info.sampling_rate
        cells = [("reference", read_audio(info, rate) if media else None, "")]
        for result in sets:
            values = result.files[index]
            text = "<br>".join(
                f"{m}: {float(values[m]):.3f}" if math.isfinite(float(values[m])) else f"{m}: n/a"  # type: ignore[arg-type]
                for m in metrics
            )
            audio = read_audio(audio_info(result.paths[stem]), rate) if media else None
            cells.append((result.name, audio, text))
        for name, audio, text in cells:
            parts.append("<td class='clip'>")
            if audio is not None:
                parts.append(f"<audio controls preload='metadata' src='data:audio/wav;base64,{_wav_base64(audio, rate)}'></audio>")
                parts.append(f"<img alt='{html.escape(name)} spectrogram' src='data:image/png;base64,{_spectrogram_base64(audio, rate)}'>")
            parts.append(f"<div class='vals'>{text}</div></td>")
        parts.append("</tr>")
    parts.append("</table></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.evaluate",
        description=(
            "Score predicted audio against references with PESQ, M-STFT, MCD, periodicity and V/UV F1\n"
            "(melvoc.metrics). Predictions pair with references by file stem."
        ),
        epilog=(
            "examples:\n"
            "  python -m melvoc.evaluate refs/ --predicted hifigan/ --predicted bigvgan/ --report ab.html\n"
            "  python -m melvoc.evaluate val.txt --checkpoint last.ckpt --json scores.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("reference", metavar="REFERENCE", help="folder, filelist or metadata.csv of reference audio")
    parser.add_argument("--predicted", "-p", action="append", default=[], metavar="PRED",
                        help="folder of predicted audio (<stem>.wav per reference); repeat for A/B sets")
    parser.add_argument("--checkpoint", "-c", action="append", default=[], metavar="CKPT",
                        help="copy-synthesize the references with this generator first and score it as a set")
    parser.add_argument("--metrics", "-m", default=",".join(DEFAULT_METRICS),
                        help="comma-separated: pesq,mstft,mcd,periodicity,vuv_f1,f0_rmse (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the scores as JSON")
    parser.add_argument("--report", type=Path, metavar="OUT.html", help="write a self-contained HTML report")
    parser.add_argument("--report-files", type=int, default=20, metavar="N",
                        help="files with players and spectrograms in the report (default: %(default)s)")
    parser.add_argument("--sampling-rate", type=int, default=None, metavar="HZ",
                        help="score at this rate (default: each reference file's rate)")
    parser.add_argument("--hop-size", type=int, default=None,
                        help="length difference that warns (default: the checkpoint's hop, else 256)")
    parser.add_argument("--no-resample", dest="resample", action="store_false",
                        help="reject predictions at another rate than their reference instead of resampling")
    parser.add_argument("--pitch-model", choices=CREPE_MODELS, default="full",
                        help="CREPE for periodicity / V/UV F1: full (the CARGAN/BigVGAN protocol) or tiny "
                             "(about 15x less CPU time) (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device for CREPE and synthesis (default: %(default)s)")
    parser.add_argument("--synthesized-dir", type=Path, default=None,
                        help="keep the copy-synthesis of --checkpoint here (default: a temporary folder)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _evaluate_parser().parse_args(argv)
    try:
        metrics = parse_metrics(args.metrics)
        # The report plays the synthesized audio: without --synthesized-dir it lives in a temporary
        # folder that must outlast the report.
        with tempfile.TemporaryDirectory(prefix="melvoc-evaluate-") as scratch:
            sets = evaluate(
                args.reference, args.predicted, checkpoints=args.checkpoint, metrics=metrics,
                sampling_rate=args.sampling_rate, hop_size=args.hop_size, resample=args.resample,
                pitch_model=args.pitch_model, device=args.device,
                synthesized_dir=args.synthesized_dir or scratch, progress=False if args.quiet else None,
            )
            print(format_table(sets, metrics))
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(to_json(sets, metrics), indent=2) + "\n", encoding="utf-8")
                print(f"wrote {args.json}")
            if args.report:
                write_report(args.report, args.reference, sets, metrics, sampling_rate=args.sampling_rate,
                             media_files=args.report_files)
                print(f"wrote {args.report}")
    except (FileNotFoundError, ValueError) as error:  # EvaluationError, AudioDataError, checkpoint and synthesis errors
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
