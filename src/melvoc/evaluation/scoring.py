"""Score vocoded audio against references: :func:`evaluate` (the command: ``python -m melvoc.evaluate``).

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

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from melvoc.data.io import AudioDataError, AudioInfo, audio_info, problem_listing, read_audio
from melvoc.data.sources import read_source
from melvoc.metrics import CREPE_MODELS, DEFAULT_METRICS, PITCH_METRICS, mean_ci95, parse_metrics, pitch_track, score

__all__ = ["DEFAULT_HOP", "EvaluationError", "SetResult", "evaluate"]


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
    from melvoc.deploy.inference import load_generator
    from melvoc.deploy.synthesize import synthesize

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


