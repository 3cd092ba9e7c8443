"""``AudioDataset``: random crops for training, whole clips for validation, optional teacher-forced mels."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from melvoc.data.io import (
    AudioDataError,
    AudioInfo,
    audio_info,
    check_rate,
    problem_listing,
    read_audio,
    read_crop,
    resampled_length,
)
from melvoc.data.resumable import ItemKey, item_rng
from melvoc.data.sources import AudioEntry, OnError, check_on_error
from melvoc.features import MelConfig, min_audio_length
from melvoc.features.mel_files import MEL_FILE_SUFFIXES, read_mel_file
from melvoc.features.statistics import check_mel_files

__all__ = ["AudioDataset", "ShortClips", "draw_below", "load_mel", "scale_audio", "silence_log_mel"]

log = logging.getLogger(__name__)

ShortClips = Literal["pad", "drop", "error"]
_SHORT_CLIPS = ("pad", "drop", "error")
_MEL_SUFFIXES = MEL_FILE_SUFFIXES
# How many other items a training crop tries when on_error=skip meets a broken file mid-epoch.
_SKIP_RETRIES = 16


class AudioDataset(Dataset):
    """Mono float32 audio at ``features.sampling_rate`` from a list of files.

    Training (``segment_size`` set): each item is a random crop of ``segment_size`` samples, read with
    a seek (and, at another rate, resampled from the crop plus a margin only). Validation/test
    (``segment_size=None``): each item is the whole clip, capped at ``max_seconds`` and trimmed to a
    multiple of ``hop_size``, in the listed order.

    Items are dicts ``{"audio": (T,) float32, "length": int, "name": str}`` plus
    ``"mel_target": (num_mels, T // hop_size)`` when ``mel_dir`` is given (HiFi-GAN fine-tuning: the
    mel ``<mel_dir>/<stem>.npy`` or ``.pt``, shape ``(num_mels, frames)`` or ``(1, num_mels, frames)``,
    cropped in lock-step with the audio).

    Headers are read once here, so unreadable, empty, missing, wrong-rate (with ``resample=False``)
    and too-short files fail now, in the main process, all listed in one error; with
    ``on_error="skip"`` they are left out and logged with a count.

    Args:
        entries: the files (:class:`~melvoc.data.sources.AudioEntry`, paths or strings).
        features: the mel parameters (only ``sampling_rate``, ``hop_size`` and the mel shape are used).
        segment_size: crop length in samples (a multiple of ``hop_size``), or ``None`` for whole clips.
        resample: resample files at another rate with soxr; when off they are an error.
        short_clips: clips shorter than ``segment_size`` (whole clips: shorter than one frame) are
            zero-padded (``pad``, HiFi-GAN), left out (``drop``) or an error (``error``).
        on_error: ``raise`` or ``skip`` bad files.
        peak_normalize: scale audio to this peak (HiFi-GAN, BigVGAN: 0.95), or ``None``.
        peak_normalize_scope: whose peak: ``file`` (HiFi-GAN: the whole file's, measured once here, so
            crops keep their relative loudness) or ``crop`` (BigVGAN: each training crop's own, and each
            whole validation clip's).
        gain_db: gain applied after normalisation.
        max_seconds: cap on whole clips, or ``None``.
        mel_dir: folder of precomputed mels for fine-tuning, or ``None``.
        check_mel_stats: stop when a sample of the ``mel_dir`` mels has another floor, range or log
            base than ``features`` (:func:`melvoc.features.statistics.check_mel_statistics`).
        split: a label for messages (``train``, ``val``, ...).
    """

    def __init__(
        self,
        entries: Sequence[AudioEntry | Path | str],
        features: MelConfig | Mapping[str, Any],
        *,
        segment_size: Optional[int] = None,
        resample: bool = True,
        short_clips: ShortClips = "pad",
        on_error: OnError = "raise",
        peak_normalize: Optional[float] = None,
        peak_normalize_scope: Literal["file", "crop"] = "file",
        gain_db: float = 0.0,
        max_seconds: Optional[float] = None,
        mel_dir: Optional[Path | str] = None,
        check_mel_stats: bool = True,
        split: str = "train",
    ) -> None:
        self.features = MelConfig.coerce(features)
        hop = self.features.hop_size
        if segment_size is not None:
            segment_size = int(segment_size)
            if segment_size <= 0 or segment_size % hop:
                lower = max(hop, segment_size // hop * hop)
                raise ValueError(
                    f"data.segment_size={segment_size}: must be a positive multiple of "
                    f"hop_size={hop} (e.g. {lower} or {lower + hop})"
                )
        if short_clips not in _SHORT_CLIPS:
            raise ValueError(f"data.short_clips={short_clips!r}: must be one of {_SHORT_CLIPS}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"data.max_val_seconds={max_seconds}: must be > 0 (or null for no cap)")
        if peak_normalize is not None and not 0 < peak_normalize <= 1:
            raise ValueError(f"data.peak_normalize={peak_normalize}: must be in (0, 1] or null")
        if peak_normalize_scope not in ("file", "crop"):
            raise ValueError(f"data.peak_normalize_scope={peak_normalize_scope!r}: must be 'file' or 'crop'")
        self.segment_size = segment_size
        self.resample = bool(resample)
        self.short_clips = short_clips
        self.on_error = check_on_error(on_error)
        self.peak_normalize = peak_normalize
        self.peak_normalize_scope = peak_normalize_scope
        self.gain = float(10.0 ** (gain_db / 20.0))
        self.max_samples = (
            None
            if max_seconds is None
            else max(hop, int(max_seconds * self.features.sampling_rate) // hop * hop)
        )
        self.mel_dir = None if mel_dir is None else Path(mel_dir)
        self.check_mel_stats = bool(check_mel_stats)
        self.split = split
        self.mel_pad_value = silence_log_mel(self.features)
        self.skipped: list[str] = []
        self._index(
            [e if isinstance(e, AudioEntry) else AudioEntry(Path(e), str(e), Path(e).stem) for e in entries]
        )

    # ------------------------------------------------------------------ index (main process)
    def _index(self, entries: list[AudioEntry]) -> None:
        sr, hop = self.features.sampling_rate, self.features.hop_size
        shortest = self.segment_size or max(hop, math.ceil(min_audio_length(self.features) / hop) * hop)
        infos: list[AudioInfo] = []
        names: list[str] = []
        lengths: list[int] = []
        mel_paths: list[Optional[Path]] = []
        problems: list[str] = []
        padded: list[str] = []
        dropped: list[str] = []
        for entry in entries:
            try:
                info = audio_info(entry.path)
                check_rate(info, sr, self.resample)
                mel_path = self._find_mel(entry) if self.mel_dir is not None else None
            except AudioDataError as exc:
                problems.append(_with_origin(str(exc), entry))
                continue
            length = resampled_length(info.frames, info.sampling_rate, sr)
            if length < shortest:
                what = (
                    f"{entry.path}: {length / sr:.3f} s ({length} samples at {sr} Hz) is shorter than "
                    + (f"data.segment_size={shortest}" if self.segment_size else f"one frame ({shortest})")
                )
                if self.short_clips == "error":
                    problems.append(
                        _with_origin(what + "; set data.short_clips=pad or drop, or remove it", entry)
                    )
                    continue
                if self.short_clips == "drop":
                    dropped.append(str(entry.path))
                    continue
                padded.append(str(entry.path))
            infos.append(info)
            names.append(entry.name)
            lengths.append(length)
            mel_paths.append(mel_path)
        if problems:
            if self.on_error == "raise":
                raise AudioDataError(
                    problem_listing(
                        f"{self.split} data: {len(problems)} of {len(entries)} files unusable",
                        problems,
                        "Fix or remove them, or set data.on_error=skip to leave them out",
                        10,
                    )
                )
            self.skipped.extend(problems)
            log.warning(
                "%s data: skipped %d of %d unusable files (on_error=skip): %s",
                self.split, len(problems), len(entries), "; ".join(problems[:10]),
            )
        if dropped:
            log.warning(
                "%s data: dropped %d clip(s) shorter than %d samples (short_clips=drop): %s",
                self.split, len(dropped), shortest, ", ".join(dropped[:10]),
            )
        if padded:
            log.info(
                "%s data: %d clip(s) shorter than %d samples will be zero-padded (short_clips=pad)",
                self.split, len(padded), shortest,
            )
        if not infos:
            raise AudioDataError(
                f"{self.split} data: no usable audio files out of {len(entries)}; check the filelist "
                "and data.root (see the messages above)"
            )
        if self.check_mel_stats:
            check_mel_files([p for p in mel_paths if p is not None], self.features,
                            against="the features of this run", fix="set data.check_mel_stats=false to train on them anyway")
        self.infos = infos
        self.names = names
        self.lengths = lengths
        self.mel_paths = mel_paths
        self.num_padded = len(padded)
        self.num_dropped = len(dropped)
        by_file = self.peak_normalize is not None and self.peak_normalize_scope == "file"
        self.peaks = self._measure_peaks() if by_file else None

    def _find_mel(self, entry: AudioEntry) -> Path:
        assert self.mel_dir is not None
        for suffix in _MEL_SUFFIXES:
            candidate = self.mel_dir / f"{entry.name}{suffix}"
            if candidate.is_file():
                return candidate
        raise AudioDataError(
            f"{entry.path}: no precomputed mel {self.mel_dir / entry.name}.npy (or .pt) for fine-tuning; "
            "export the mels with the audio's stem as name, or fix data.mel_dir",
            entry.path,
        )

    def _measure_peaks(self) -> np.ndarray:
        log.info(
            "%s data: reading %d files once to measure their peaks (peak_normalize)", self.split, len(self.infos)
        )
        peaks = np.empty(len(self.infos), dtype=np.float32)
        for i, info in enumerate(self.infos):
            audio = read_audio(info, self.features.sampling_rate, resample=self.resample)
            peaks[i] = float(np.abs(audio).max()) if audio.size else 0.0
        return peaks

    # ------------------------------------------------------------------ items (workers)
    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, index: int | ItemKey) -> Optional[dict[str, Any]]:
        """Item ``index``; or, from :class:`~melvoc.data.resumable.ResumableSampler`, ``(index, key)``:
        then the crop offset (and any replacement item under ``on_error=skip``) is drawn from
        :func:`~melvoc.data.resumable.item_rng` of ``key``, the same in every process and on resume."""
        index, key = index if isinstance(index, tuple) else (index, None)
        rng = None if key is None else item_rng(key)
        for attempt in range(_SKIP_RETRIES if self.segment_size else 1):
            i = index if attempt == 0 else draw_below(len(self.infos), rng)
            try:
                return self._load(i, rng)
            except AudioDataError as exc:
                if self.on_error == "raise":
                    raise
                self.skipped.append(str(exc))
                log.warning("%s data: skipped %s (on_error=skip, %d skipped so far in this process)",
                            self.split, exc, len(self.skipped))
            except Exception as exc:  # anything else still names the file
                path = self.infos[i].path
                if self.on_error == "raise":
                    raise AudioDataError(f"{path}: {type(exc).__name__}: {exc}", path) from exc
                self.skipped.append(f"{path}: {exc}")
                log.warning("%s data: skipped %s: %s (on_error=skip)", self.split, path, exc)
        return None

    def _load(self, i: int, rng: Optional[np.random.Generator] = None) -> dict[str, Any]:
        info, hop, sr = self.infos[i], self.features.hop_size, self.features.sampling_rate
        mel = self._load_mel(i) if self.mel_paths[i] is not None else None
        length = self.lengths[i]
        if mel is not None:
            # Teacher-forced mels may be one frame longer/shorter than the audio; crop both to the common part.
            length = min(mel.shape[-1], length // hop) * hop
        if self.segment_size is not None:
            seg = self.segment_size
            if length >= seg:
                if mel is not None:  # frame-aligned, so the mel crop matches exactly
                    start = draw_below((length - seg) // hop + 1, rng) * hop
                else:
                    start = draw_below(length - seg + 1, rng)
                audio = read_crop(info, start, seg, sr, resample=self.resample)
                valid = seg
            else:
                start, valid = 0, length
                audio = read_crop(info, 0, seg, sr, resample=self.resample)
                audio[valid:] = 0.0
            item_len = seg
        else:
            audio = read_audio(info, sr, resample=self.resample)
            start = 0
            valid = min(length, audio.shape[0])
            if self.max_samples is not None:
                valid = min(valid, self.max_samples)
            valid = valid // hop * hop
            shortest = max(hop, math.ceil(min_audio_length(self.features) / hop) * hop)
            item_len = max(valid, shortest)
            audio = np.pad(audio[:valid], (0, item_len - valid))
        audio = self._scale(audio, i)
        item: dict[str, Any] = {"audio": torch.from_numpy(audio), "length": valid, "name": self.names[i]}
        if mel is not None:
            frames = item_len // hop
            first = start // hop
            part = mel[:, first : first + min(frames, valid // hop)]
            if part.shape[-1] < frames:
                part = torch.nn.functional.pad(part, (0, frames - part.shape[-1]), value=self.mel_pad_value)
            item["mel_target"] = part.contiguous()
        return item

    def _scale(self, audio: np.ndarray, i: int) -> np.ndarray:
        peak = None if self.peaks is None else float(self.peaks[i])
        return scale_audio(audio, self.gain, self.peak_normalize, peak)

    def _load_mel(self, i: int) -> Tensor:
        path = self.mel_paths[i]
        assert path is not None
        mel = load_mel(path, self.features.num_mels)
        frames = self.lengths[i] // self.features.hop_size
        if abs(mel.shape[-1] - frames) > 1:
            raise AudioDataError(
                f"{path}: {mel.shape[-1]} mel frames but the audio {self.infos[i].path} gives {frames} "
                f"frames ({self.lengths[i]} samples / hop_size {self.features.hop_size}); the mel was "
                "made from other audio or another hop size: regenerate it from this file with these features",
                path,
            )
        return mel


def draw_below(high: int, rng: Optional[np.random.Generator] = None) -> int:
    """A uniform integer in ``[0, high)``: from ``rng``, else from torch's RNG (which the DataLoader
    seeds differently in every worker, and Lightning per rank)."""
    if rng is not None:
        return int(rng.integers(high))
    return int(torch.randint(0, high, ()).item())


def scale_audio(audio: np.ndarray, gain: float, peak_normalize: Optional[float], peak: Optional[float]) -> np.ndarray:
    """``audio`` times ``gain``, normalised to ``peak_normalize`` first when that is set, clipped to [-1, 1].

    ``peak`` is the peak to normalise by (the whole file's: ``peak_normalize_scope=file``); ``None``
    takes ``audio``'s own (``crop``), as ``librosa.util.normalize`` does in BigVGAN: all-zero audio
    stays as it is.
    """
    scale = gain
    if peak_normalize is not None:
        if peak is not None:
            scale *= peak_normalize / max(peak, 1e-8)
        else:
            own = float(np.abs(audio).max()) if audio.size else 0.0
            if own > 0:
                scale *= peak_normalize / own
    if scale != 1.0:
        audio = np.clip(audio * np.float32(scale), -1.0, 1.0)
    return audio


def read_mel_tensor(path: Path | str) -> Tensor:
    """The tensor stored in a mel file (``.npy``, else ``torch.save``d), as float32, any shape.

    Raises:
        AudioDataError: the file cannot be read or holds no tensor (naming the file and the cause).
    """
    try:
        mel = read_mel_file(path)
    except ValueError as exc:
        raise AudioDataError(str(exc), Path(path)) from exc
    try:
        if isinstance(mel, np.ndarray):
            return torch.from_numpy(mel.astype(np.float32, copy=False))
        return mel.float()
    except Exception as exc:
        raise AudioDataError(
            f"{path}: cannot read the mel ({type(exc).__name__}: {exc}); regenerate it", Path(path)
        ) from exc


def load_mel(path: Path | str, num_mels: int) -> Tensor:
    """A precomputed log-mel, ``.npy`` or ``.pt``, as float32 ``(num_mels, frames)``."""
    path = Path(path)
    mel = read_mel_tensor(path)
    if mel.dim() == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.dim() != 2 or mel.shape[0] != num_mels:
        raise AudioDataError(
            f"{path}: mel of shape {tuple(mel.shape)}, expected ({num_mels}, frames) or "
            f"(1, {num_mels}, frames); save it as (num_mels, frames) with features.num_mels={num_mels}",
            path,
        )
    if not torch.isfinite(mel).all():
        raise AudioDataError(f"{path}: NaN/inf in the mel; regenerate it", path)
    return mel


def silence_log_mel(features: MelConfig) -> float:
    """The log-mel of silence under ``features``: the value padded mel frames get."""
    return math.log(features.clip_val) if features.log_base == "e" else math.log10(features.clip_val)


def _with_origin(message: str, entry: AudioEntry) -> str:
    if entry.origin != str(entry.path) and not message.startswith(entry.origin):
        return f"{message} [listed at {entry.origin}]"
    return message
