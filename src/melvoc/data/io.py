"""Audio decoding: headers, whole clips and seek-and-read crops, with soxr resampling of only the crop.

Every error raised here is an :class:`AudioDataError` whose message starts with the file's path and
ends with the fix, so a failure inside a DataLoader worker still says which file and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioDataError",
    "AudioInfo",
    "audio_info",
    "check_rate",
    "problem_listing",
    "read_audio",
    "read_crop",
    "read_mono",
    "resampled_length",
]

#: Suffixes treated as audio when searching a folder (all decoded by libsndfile).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus")

# Source samples read beyond each side of a crop before resampling, in units of the output rate:
# soxr's filter reaches about this far, so the crop equals the same span of the whole resampled file
# (to float32 rounding; tests/test_data_io.py checks it).
_RESAMPLE_MARGIN = 256


def problem_listing(head: str, items: Sequence[str], fix: str, limit: int) -> str:
    """``head:``, then the first ``limit`` items one a line (and how many more), then ``fix``."""
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{head}:\n  {shown}{more}\n{fix}"


class AudioDataError(ValueError):
    """A file (or a filelist line) that cannot be used; the message names it and says how to fix it."""

    def __init__(self, message: str, path: Optional[Path | str] = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


@dataclass(frozen=True)
class AudioInfo:
    """What the header of one audio file says.

    Attributes:
        path: the file.
        frames: samples per channel at the file's own rate.
        sampling_rate: the file's sample rate in Hz.
        channels: channel count (mixed to mono when read).
        format: container, e.g. ``WAV``, ``FLAC``, ``OGG``.
        subtype: sample encoding, e.g. ``PCM_16``, ``FLOAT``, ``VORBIS``.
    """

    path: Path
    frames: int
    sampling_rate: int
    channels: int
    format: str
    subtype: str

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sampling_rate


def audio_info(path: Path | str) -> AudioInfo:
    """Read the header of ``path`` (no samples); raise :class:`AudioDataError` if it is missing,
    unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise AudioDataError(f"{path}: file not found (fix the path or the data root)", path)
    if path.stat().st_size == 0:
        raise AudioDataError(f"{path}: empty file (0 bytes); remove it from the list or re-export it", path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises RuntimeError/LibsndfileError/TypeError by format
        raise AudioDataError(
            f"{path}: unreadable audio ({_reason(exc)}); re-encode it as WAV/FLAC/OGG "
            "or remove it from the list",
            path,
        ) from exc
    if info.frames <= 0:
        raise AudioDataError(
            f"{path}: no audio samples (0 frames); remove it from the list or re-export it", path
        )
    return AudioInfo(
        path=path,
        frames=int(info.frames),
        sampling_rate=int(info.samplerate),
        channels=int(info.channels),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def resampled_length(frames: int, source_rate: int, target_rate: int) -> int:
    """Samples that ``frames`` samples at ``source_rate`` become at ``target_rate`` (soxr's rounding)."""
    if source_rate == target_rate:
        return frames
    return (2 * frames * target_rate + source_rate) // (2 * source_rate)


def check_rate(info: AudioInfo, sampling_rate: int, resample: bool) -> None:
    """Raise when the file's rate differs from ``sampling_rate`` and resampling is off."""
    if info.sampling_rate != sampling_rate and not resample:
        raise AudioDataError(
            f"{info.path}: {info.sampling_rate} Hz, expected {sampling_rate} Hz "
            "(set data.resample=true, or resample the files, or pick a features preset at "
            f"{info.sampling_rate} Hz)",
            info.path,
        )


def read_audio(
    info: AudioInfo, sampling_rate: int, *, resample: bool = True, check_finite: bool = True
) -> np.ndarray:
    """The whole file as mono float32 at ``sampling_rate``. Shape ``(T,)``."""
    check_rate(info, sampling_rate, resample)
    audio = read_mono(info, 0, info.frames)
    if info.sampling_rate != sampling_rate:
        audio = soxr.resample(audio, info.sampling_rate, sampling_rate)
    if check_finite:
        _check_finite(audio, info.path)
    # Float files and resampling overshoot can leave [-1, 1]; the contract is [-1, 1].
    return np.clip(audio, -1.0, 1.0, dtype=np.float32)


def read_crop(
    info: AudioInfo,
    start: int,
    length: int,
    sampling_rate: int,
    *,
    resample: bool = True,
    check_finite: bool = True,
) -> np.ndarray:
    """Samples ``[start, start + length)`` of the file at ``sampling_rate``, mono float32. Shape ``(length,)``.

    Only the needed frames are read (seek), so a crop of a 10-minute file costs what a crop of a
    5-second one does. When the file's rate differs, the matching source span plus a margin is read
    and resampled, and the result equals the same span of the whole file resampled. Samples past the
    end of the file are zeros.
    """
    check_rate(info, sampling_rate, resample)
    source_rate = info.sampling_rate
    if source_rate == sampling_rate:
        audio = read_mono(info, start, length)
    else:
        ratio = source_rate / sampling_rate
        # Start the source span on a sample whose resampled position is an integer, so the
        # resampled span lines up exactly with the whole resampled file.
        step = source_rate // math.gcd(source_rate, sampling_rate)
        margin = math.ceil(_RESAMPLE_MARGIN * max(1.0, ratio))
        src_start = max(0, (math.floor(start * ratio) - margin) // step * step)
        src_stop = min(info.frames, math.ceil((start + length) * ratio) + margin)
        chunk = read_mono(info, src_start, src_stop - src_start)
        resampled = soxr.resample(chunk, source_rate, sampling_rate)
        offset = start - src_start * sampling_rate // source_rate
        audio = resampled[offset : offset + length]
    if audio.shape[0] < length:
        audio = np.pad(audio, (0, length - audio.shape[0]))
    if check_finite:
        _check_finite(audio, info.path)
    # Float files and resampling overshoot can leave [-1, 1]; the contract is [-1, 1].
    return np.clip(audio, -1.0, 1.0, dtype=np.float32)


def read_mono(info: AudioInfo, start: int, frames: int) -> np.ndarray:
    """Frames ``[start, start + frames)`` at the file's own rate, channels averaged. Shape ``(n,)`` float32."""
    try:
        with sf.SoundFile(str(info.path)) as f:
            if start:
                f.seek(start)
            audio = f.read(frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioDataError(
            f"{info.path}: cannot decode frames {start}..{start + frames} ({_reason(exc)}); "
            "the file is probably truncated or corrupt: re-encode it or remove it from the list",
            info.path,
        ) from exc
    return audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)


def _check_finite(audio: np.ndarray, path: Path) -> None:
    if not np.isfinite(audio).all():
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise AudioDataError(
            f"{path}: {bad} NaN/inf sample(s); repair or re-export the file, or remove it from the "
            "list (or set data.on_error=skip)",
            path,
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
