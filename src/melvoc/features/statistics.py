"""What log-mels alone show (bands, floor, range, log base, normalisation), and the pipeline's check of mel
files against the features they are fed to.

:func:`check_mel_statistics` stops fine-tuning on teacher-forced mels (``data.mel_dir``) and
synthesis from mel files whose floor, range or log base contradict the checkpoint's features
(:class:`MelMismatchError`); ``python -m melvoc.identify`` reports the same statistics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from melvoc.features.config import MelConfig, mel_filterbank
from melvoc.features.mel_files import read_mel_file

__all__ = ["MelMismatchError", "MelStatistics", "check_mel_files", "check_mel_statistics", "expected_range",
           "floor_text", "mel_array", "mel_statistics", "nice_value"]

_LN10 = math.log(10.0)
_LINEAGES = {
    ("e", 1e-5): "HiFi-GAN/BigVGAN-style",
    ("e", 1e-7): "Vocos-style",
    ("10", 1e-5): "log10, Tacotron/ESPnet-style",
    ("10", 1e-10): "log10, ParallelWaveGAN/ESPnet-style",
    ("dB", 1e-5): "dB, Coqui TTS-style",
}



class MelMismatchError(ValueError):
    """Mels whose statistics contradict the features they are fed to (the message quotes both).

    Not an ``AudioDataError``: importing :mod:`melvoc.data` would pull in Lightning (seconds) for
    the command line tools.
    """

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path



def nice_value(value: float, rel: float = 1e-4) -> Optional[float]:
    """``value`` rounded to one or two significant digits when it is that within ``rel``, else None."""
    if not math.isfinite(value) or value <= 0:
        return None
    exponent = math.floor(math.log10(value))
    for digits in (0, 1):
        rounded = round(value / 10.0**exponent, digits) * 10.0**exponent
        if math.isclose(rounded, value, rel_tol=rel):
            return float(f"{rounded:.{digits + 1}g}")
    return None


def _floor_meaning(value: float) -> list[tuple[str, float]]:
    """The (log base, clip value) pairs a log floor ``value`` is a round number in (dB: 20·log10)."""
    readings = []
    for base, clip in (("e", math.exp(value)), ("10", 10.0**value), ("dB", 10.0 ** (value / 20.0))):
        nice = nice_value(clip)
        if nice is not None and 1e-12 <= nice <= 1e-2 and (base == "dB") == (value <= -20):
            readings.append((base, nice))
    return readings


def _short(value: float) -> str:
    """``1e-07`` -> ``1e-7``, ``2e-06`` -> ``2e-6``, ``0.001`` -> ``1e-3``."""
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _describe_floor(base: str, clip: float) -> str:
    name = _LINEAGES.get((base, clip))
    function = {"e": "ln", "10": "log10", "dB": "20·log10"}[base]
    return f"{function}({_short(clip)})" + (f", {name}" if name else "")


@dataclass
class MelStatistics:
    """What mels alone show.

    Attributes:
        num_mels: bands.
        frames: frames over all files.
        minimum, maximum: extreme values.
        floor: the value many entries pile up at (a log floor reached), or None.
        floor_per_band: the per-band floors where bands pile up at different values (a magnitude
            ``sqrt(eps)`` floor that the log's clamp never reaches), or None.
        log_base, clip_val: the round reading of ``floor`` (``"e"``, ``"10"`` or ``"dB"``), or None.
        normalisation: ``"per-bin mean/variance (ESPnet-style)"``, ``"dB scaling (Coqui TTS-style)"`` or None.
    """

    num_mels: int
    frames: int
    minimum: float
    maximum: float
    floor: Optional[float] = None
    floor_per_band: Optional[np.ndarray] = None
    log_base: Optional[str] = None
    clip_val: Optional[float] = None
    normalisation: Optional[str] = None


def mel_array(mel: np.ndarray | torch.Tensor, name: str = "mel", *, keep_precision: bool = False) -> np.ndarray:
    """``mel`` as a ``(num_mels, frames)`` float64 array (``keep_precision``: float32, float16 and
    bfloat16 mels as float32, the precision they are computed in)."""
    if isinstance(mel, torch.Tensor):
        mel = mel.detach().cpu()
        single = keep_precision and mel.dtype in (torch.float32, torch.float16, torch.bfloat16)
        array = (mel.float() if single else mel.double()).numpy()
    else:
        array = np.asarray(mel)
        single = keep_precision and array.dtype in (np.float32, np.float16)
        array = array.astype(np.float32 if single else np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name}: shape {array.shape}, expected (num_mels, frames) or (1, num_mels, frames)")
    return array


def mel_statistics(mels: Sequence[np.ndarray | torch.Tensor]) -> MelStatistics:
    """Statistics of one or more ``(num_mels, frames)`` log-mels that hint at how they were made."""
    arrays = [mel_array(m) for m in mels]
    values = np.concatenate(arrays, axis=1)
    bands, frames = values.shape
    stats = MelStatistics(bands, frames, float(values.min()), float(values.max()))
    # A floor: many entries exactly at the minimum (float32 mels store the clamp value exactly).
    # In most bands: one band piling up at its own minimum is a sqrt(eps) magnitude floor instead.
    low = values.min()
    at_floor = np.isclose(values, low, rtol=1e-6, atol=1e-6)
    if at_floor.sum() >= max(5, 5e-4 * values.size) and at_floor.any(axis=1).mean() >= 0.25:
        stats.floor = float(low)
        readings = _floor_meaning(stats.floor)
        if readings:
            stats.log_base, stats.clip_val = readings[0]
    else:
        band_min = values.min(axis=1, keepdims=True)
        piles = np.isclose(values, band_min, rtol=1e-6, atol=1e-6).sum(axis=1)
        if (piles >= 3).mean() > 0.9:
            stats.floor_per_band = band_min[:, 0]
    stats.normalisation = _normalisation(values, stats)
    return stats


def _normalisation(values: np.ndarray, stats: MelStatistics) -> Optional[str]:
    if stats.floor is not None and stats.log_base == "dB":
        return "dB scaling (Coqui TTS-style, 20·log10 with a floor)"
    if stats.floor is not None and stats.floor in (-4.0, -1.0, 0.0) and stats.maximum <= -stats.floor + 1e-6:
        return "dB scaling normalised to [-max_norm, max_norm] or [0, max_norm] (Coqui TTS-style)"
    if stats.maximum - stats.minimum >= 40.0:
        return "dB scaling (values span >= 40: 10·log10 or 20·log10, Coqui/librosa-style)"
    if values.shape[1] >= 20:
        means, stds = values.mean(axis=1), values.std(axis=1)
        if np.abs(means).mean() < 0.6 and 0.5 <= np.median(stds) <= 1.6 and abs(values.mean()) < 0.3:
            return "per-bin mean/variance normalisation (ESPnet-style: de-normalise with its stats file)"
    return None



def _log_value(value: float, base: str) -> float:
    return math.log(value) if base == "e" else math.log10(value)


def expected_range(config: MelConfig) -> tuple[np.ndarray, float]:
    """Per-band value of digital silence and the largest value [-1, 1] audio can give, under ``config``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sums = mel_filterbank(config).double().sum(dim=1).numpy()
    silence = np.array([_log_value(max(config.clip_val, math.sqrt(config.eps) * s), config.log_base) for s in sums])
    window_sum = float(torch.hann_window(config.win_size, dtype=torch.float64).sum())
    peak = _log_value(max(config.clip_val, float(sums.max()) * math.sqrt(window_sum**2 + config.eps)), config.log_base)
    return silence, peak


def floor_text(value: float) -> str:
    """``-11.51 = ln(1e-5), HiFi-GAN/BigVGAN-style``: a log floor and the round clip value it reads as."""
    readings = _floor_meaning(value)
    return f"{value:.2f}" + (f" = {_describe_floor(*readings[0])}" if readings else "")


def _config_floor_text(config: MelConfig, silence: np.ndarray) -> str:
    function = "ln" if config.log_base == "e" else "log10"
    floor = _log_value(config.clip_val, config.log_base)
    if np.allclose(silence, floor):
        return f"{function}({_short(config.clip_val)}) = {floor:.2f}"
    return (f"{silence.min():.2f}..{silence.max():.2f} per band ({function} of sqrt(eps={_short(config.eps)}) "
            f"times each filter's sum, above the clamp {function}({_short(config.clip_val)}))")


def check_mel_statistics(mel: np.ndarray | torch.Tensor, config: MelConfig, *, name: str = "these mels",
                         against: str = "the checkpoint's features", fix: str = "") -> None:
    """Stop on mels whose statistics contradict ``config``: num_mels, floor, range, log base.

    Teacher-forced mels are predictions, so values a little below the floor are fine; the check
    fires only on clear mismatches: another floor reached (e.g. Vocos' ln(1e-7) against ln(1e-5)),
    values far below the floor, or values above what [-1, 1] audio can reach.

    Raises:
        MelMismatchError: naming ``name``, quoting both sides (``against`` names the features) and
            ending with ``fix``.
    """
    array = mel_array(mel, name)
    tail = f" ({fix})" if fix else ""
    if array.shape[0] != config.num_mels:
        raise MelMismatchError(f"{name}: {array.shape[0]} mel bands, {against} have "
                               f"num_mels={config.num_mels}{tail}", name)
    stats = mel_statistics([array])
    silence, peak = expected_range(config)
    expected = _config_floor_text(config, silence)
    scale = 1.0 if config.log_base == "e" else 1.0 / _LN10
    if stats.floor is not None and abs(stats.floor - silence.min()) > 0.05 * scale and not (
        silence.min() - 0.05 * scale <= stats.floor <= silence.max() + 0.05 * scale
    ):
        raise MelMismatchError(f"{name} floor at {floor_text(stats.floor)}; {against} floor at "
                               f"{expected}{tail}", name)
    margin = max(1.0 * scale, 0.2 * abs(float(silence.min())))
    if stats.minimum < silence.min() - margin:
        raise MelMismatchError(f"{name} go down to {floor_text(stats.minimum)}, far below the floor of "
                               f"{against}, {expected}: made with a lower floor or another log base{tail}", name)
    if stats.maximum > peak + 0.5 * scale:
        hint = ""
        if stats.normalisation:
            hint = f"; they look like {stats.normalisation}"
        elif config.log_base == "e" and stats.maximum - peak > 5:
            hint = "; made from integer-scale audio (not divided by 32768: +10.4)?"
        raise MelMismatchError(f"{name} reach {stats.maximum:.2f}, above the most [-1, 1] audio gives under "
                               f"{against} ({peak:.2f}){hint}{tail}", name)


def check_mel_files(paths: Sequence[str | Path], config: MelConfig, *, fix: str, limit: int = 16,
                    against: str = "the checkpoint's features") -> None:
    """:func:`check_mel_statistics` on up to ``limit`` of the mel files ``paths`` (spread over the list)."""
    paths = list(paths)
    if not paths:
        return
    step = max(1, len(paths) // limit)
    for path in paths[::step][:limit]:
        try:
            mel = mel_array(read_mel_file(path), str(path))
        except ValueError:
            continue  # unreadable or misshapen files are reported where the mels are loaded, with the fix
        if mel.shape[0] != config.num_mels:
            continue
        check_mel_statistics(mel, config, name=f"{path}: these mels", against=against, fix=fix)


