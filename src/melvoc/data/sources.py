"""Where the audio comes from: VITS/HiFi-GAN filelists, plain path lists, LJSpeech ``metadata.csv``
and folders searched recursively; plus the deterministic train/validation split of one source."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from melvoc.data.io import AUDIO_EXTENSIONS, AudioDataError, problem_listing

__all__ = ["AudioEntry", "OnError", "read_source", "report_missing", "split_entries"]

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
_ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class AudioEntry:
    """One audio file of a source.

    Attributes:
        path: the resolved audio file.
        origin: where it was listed, ``"filelist.txt:12"`` (for error messages), or the path itself.
        name: the file's stem, used as the item's name in batches.
    """

    path: Path
    origin: str
    name: str


def check_on_error(on_error: str) -> str:
    """Validate an ``on_error`` setting."""
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: must be one of {_ON_ERROR}")
    return on_error


def read_source(
    source: Path | str, root: Optional[Path | str] = None, on_error: OnError = "raise"
) -> list[AudioEntry]:
    """The audio files of ``source``, in a deterministic order.

    ``source`` may be:

    - a filelist, one item per line, ``path|anything|...`` (VITS, HiFi-GAN) or just ``path``; relative
      paths resolve against ``root``, else the filelist's folder; a path without a suffix gets the
      first of ``.wav``, ``.flac``, ... that exists (HiFi-GAN lists ``LJ001-0001|text``);
    - an LJSpeech-style ``metadata.csv`` (``id|text|...``; audio in ``wavs/<id>.wav`` next to it, or
      in ``root``), or a folder that holds one and a ``wavs/`` folder;
    - any other folder: every audio file below it (``.wav .flac .ogg .oga .opus``), sorted.

    Lines without a path raise :class:`AudioDataError` naming the filelist and line (with
    ``on_error="skip"`` they are skipped and logged). Missing files are not checked here
    (see :func:`report_missing`).
    """
    check_on_error(on_error)
    source = Path(source).expanduser()
    if source.is_dir():
        if (source / "metadata.csv").is_file() and (source / "wavs").is_dir():
            return _read_list(source / "metadata.csv", Path(root) if root else source / "wavs", on_error)
        return _scan_folder(source)
    if not source.is_file():
        raise AudioDataError(
            f"{source}: data source not found; point data.train_filelist / data.val_filelist at a "
            "filelist, a metadata.csv or a folder of audio files",
            source,
        )
    if source.name == "metadata.csv":
        return _read_list(source, Path(root) if root else source.parent / "wavs", on_error)
    return _read_list(source, Path(root) if root else source.parent, on_error)


def _read_list(listfile: Path, base: Path, on_error: OnError) -> list[AudioEntry]:
    try:
        lines = listfile.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise AudioDataError(
            f"{listfile}: not a UTF-8 text filelist ({exc.reason} at byte {exc.start}); "
            "pass a filelist (one `path|...` per line), a metadata.csv or a folder",
            listfile,
        ) from exc
    entries: list[AudioEntry] = []
    skipped: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        field = line.split("|", 1)[0].strip()
        origin = f"{listfile}:{lineno}"
        if not field:
            message = (
                f"{origin}: no audio path before the first '|' in {line[:60]!r}; "
                "each line must start with the audio path (`path|speaker|text`)"
            )
            if on_error == "raise":
                raise AudioDataError(message, listfile)
            skipped.append(origin)
            continue
        path = _resolve(Path(field).expanduser(), base)
        entries.append(AudioEntry(path=path, origin=origin, name=path.stem))
    if skipped:
        log.warning(
            "%s: skipped %d line(s) without an audio path: %s", listfile, len(skipped), ", ".join(skipped[:10])
        )
    return entries


def _resolve(path: Path, base: Path) -> Path:
    if not path.is_absolute():
        path = base / path
    if path.suffix.lower() not in AUDIO_EXTENSIONS and not path.exists():
        for ext in AUDIO_EXTENSIONS:
            candidate = path.with_name(path.name + ext)
            if candidate.exists():
                return candidate
    return path


def _scan_folder(folder: Path) -> list[AudioEntry]:
    paths = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )
    if not paths:
        raise AudioDataError(
            f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in this folder or below; "
            "point the data at a folder of audio files, a filelist or a metadata.csv",
            folder,
        )
    return [AudioEntry(path=p, origin=str(p), name=p.stem) for p in paths]


def report_missing(entries: Sequence[AudioEntry], what: str, show: int = 5) -> Optional[str]:
    """A message listing the entries whose file does not exist (count and the first few), or ``None``."""
    missing = [e for e in entries if not e.path.is_file()]
    if not missing:
        return None
    return problem_listing(
        f"{what}: {len(missing)} of {len(entries)} audio files not found",
        [f"{e.origin}: {e.path}" for e in missing],
        "Relative paths resolve against data.root, else the filelist's folder: set data.root, "
        "fix the filelist, or set data.on_error=skip to leave them out",
        show,
    )


def split_entries(
    entries: Sequence[AudioEntry],
    val_count: Optional[int] = None,
    val_fraction: Optional[float] = None,
    seed: int = 1234,
) -> tuple[list[AudioEntry], list[AudioEntry]]:
    """Split one source into (train, validation), deterministically for a given ``seed``.

    Exactly one of ``val_count`` (items) and ``val_fraction`` (of the items, at least one) is used;
    ``val_count`` wins when both are set. Both lists keep the source's order.
    """
    n = len(entries)
    if val_count is not None:
        count = int(val_count)
    elif val_fraction is not None:
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction}: must be in (0, 1)")
        count = max(1, round(n * float(val_fraction)))
    else:
        raise ValueError(
            "no validation data: set data.val_filelist, or data.val_count / data.val_fraction "
            "to split the training source"
        )
    if not 0 < count < n:
        raise ValueError(
            f"data.val_count={count}: must be in [1, {n - 1}] for a source of {n} files"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:count])
    train = [e for i, e in enumerate(entries) if i not in val_idx]
    val = [e for i, e in enumerate(entries) if i in val_idx]
    return train, val
