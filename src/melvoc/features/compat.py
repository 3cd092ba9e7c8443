"""Drop-in replacements for the classic VITS ``mel_processing.py`` functions.

``from melvoc.compat import mel_spectrogram_torch`` replaces the old import: same names, same
positional signatures, same results (float64 within 1e-10, float32 within 1e-5 of the original on
``(B, T)`` audio). The computation is :mod:`melvoc.features` with its default (VITS) knobs:
magnitude ``sqrt(re^2 + im^2 + 1e-6)``, reflect pre-pad ``int((n_fft - hop_size) / 2)``, librosa
slaney filterbank, ``ln(clamp(mel, 1e-5))``.

What differs from the original, on purpose:

* **Caches.** The original keyed its filterbank cache by ``fmax``, dtype and device only, so a
  second call with the same ``fmax`` but another ``n_fft``/``num_mels``/``sampling_rate`` silently
  reused the first filterbank; and both of its caches grew without bound. Here window and
  filterbank come from the bounded LRU in :mod:`melvoc.features`, keyed by the full
  :class:`~melvoc.features.MelConfig`, dtype and device (see :func:`cache_info`, :func:`clear_caches`).
* **Range check.** Audio outside ``[-1, 1]`` gives an :class:`AudioRangeWarning` (a
  ``UserWarning``, not a ``print``) with the offending min/max and the usual fix; NaN or inf
  samples are reported too. The check has to read the audio's min and max back to the host, which
  stalls a GPU step, so it can be switched off: per call with ``check_range=False``, globally with
  :func:`set_range_check` or the environment variable ``MELVOC_RANGE_CHECK=0``. Python shows a
  given warning once per call site by default (``warnings`` filters), not on every call.
* **Shapes.** ``(B, T)`` audio behaves exactly like the original. ``(T,)`` and ``(B, 1, T)``, which
  the original rejects inside ``torch.nn.functional.pad``/``torch.stft``, are accepted here as in
  :mod:`melvoc.features`: ``(T,) -> (n_freqs or num_mels, frames)``, ``(B, 1, T) -> (B, ..., frames)``.
* **Invalid parameters** (``win_size > n_fft``, ``fmax > sampling_rate / 2``, ``fmin >= fmax``, ...)
  raise ``ValueError`` naming the value, where the original failed later or built empty filters.
* float16/bfloat16 input is computed and returned in float32 (as :mod:`melvoc.features` does).
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Optional

import torch
from torch import Tensor

from melvoc import features
from melvoc.features import MelConfig

__all__ = [
    "MAX_WAV_VALUE",
    "AudioRangeWarning",
    "cache_info",
    "clear_caches",
    "dynamic_range_compression_torch",
    "dynamic_range_decompression_torch",
    "mel_spectrogram_torch",
    "range_check_enabled",
    "set_range_check",
    "spec_to_mel_torch",
    "spectral_de_normalize_torch",
    "spectral_normalize_torch",
    "spectrogram_torch",
]

MAX_WAV_VALUE = 32768.0
"""Full scale of 16-bit PCM: divide int16 samples by this to get float audio in [-1, 1]."""

RANGE_CHECK_ENV = "MELVOC_RANGE_CHECK"
_FALSE_WORDS = ("0", "false", "no", "off")

_range_check = os.environ.get(RANGE_CHECK_ENV, "1").strip().lower() not in _FALSE_WORDS


class AudioRangeWarning(UserWarning):
    """Audio given to the compat functions lies outside [-1, 1] or holds NaN/inf samples."""


def set_range_check(enabled: bool) -> None:
    """Turn the [-1, 1] / NaN / inf audio check of the compat functions on or off (process-wide).

    The check reads the audio's min and max back to the host on every call (a GPU sync), which is
    why it is switchable; the initial state comes from ``MELVOC_RANGE_CHECK`` (``0`` disables it).
    """
    global _range_check
    _range_check = bool(enabled)


def range_check_enabled() -> bool:
    """Whether the compat functions check the audio range by default."""
    return _range_check


def _check_range(y: Tensor, function: str, check_range: Optional[bool]) -> None:
    if not (_range_check if check_range is None else check_range) or y.numel() == 0:
        return
    # One host read for both bounds: aminmax propagates NaN and inf, so the common (clean) case
    # costs a single sync; the detailed counts below are only computed on the failure path.
    low, high = torch.stack(torch.aminmax(y.detach())).tolist()
    if -1.0 <= low and high <= 1.0:
        return
    hint = (
        f"(set melvoc.compat.set_range_check(False), {RANGE_CHECK_ENV}=0 or check_range=False "
        "to skip this check, which reads the audio back to the host on every call)"
    )
    finite = torch.isfinite(y)
    n_bad = int(y.numel() - finite.sum())
    if n_bad:
        n_nan = int(torch.isnan(y).sum())
        warnings.warn(
            f"{function}: audio of shape {tuple(y.shape)} has {n_nan} NaN and {n_bad - n_nan} "
            f"inf sample(s); the spectrogram will be NaN/inf there: check the decoder or the "
            f"model output that produced it {hint}",
            AudioRangeWarning,
            stacklevel=3,
        )
        if not bool(finite.any()):
            return
        values = y.detach()[finite]
        low, high = values.min().item(), values.max().item()
        if -1.0 <= low and high <= 1.0:
            return
    warnings.warn(
        f"{function}: audio of shape {tuple(y.shape)} is outside [-1, 1]: min value is {low:.6g}, "
        f"max value is {high:.6g}; float audio should lie in [-1, 1] (divide int16 PCM by "
        f"MAX_WAV_VALUE = {MAX_WAV_VALUE:g}, or peak-normalise) {hint}",
        AudioRangeWarning,
        stacklevel=3,
    )


@functools.lru_cache(maxsize=64)
def _config(
    sampling_rate: int,
    n_fft: int,
    hop_size: int,
    win_size: int,
    num_mels: int,
    fmin: float,
    fmax: Optional[float],
    center: bool,
) -> MelConfig:
    # Memoised so that a hot training loop pays for MelConfig validation once per parameter set.
    return MelConfig(
        sampling_rate=sampling_rate,
        n_fft=n_fft,
        hop_size=hop_size,
        win_size=win_size,
        num_mels=num_mels,
        fmin=fmin,
        fmax=fmax,
        center=bool(center),
    )


def _spec_config(n_fft: int, sampling_rate: int, hop_size: int, win_size: int, center: bool) -> MelConfig:
    # The linear spectrogram does not depend on the filterbank; one band over the full range is a
    # placeholder that always builds a non-empty filter.
    return _config(sampling_rate, n_fft, hop_size, win_size, 1, 0.0, None, center)


def _filterbank_config(n_fft: int, num_mels: int, sampling_rate: int, fmin: float, fmax: Optional[float]) -> MelConfig:
    # Hop and window do not shape the filterbank; fixed placeholders keep one cache entry per filterbank.
    return _config(sampling_rate, n_fft, max(1, n_fft // 4), n_fft, num_mels, fmin, fmax, False)


def dynamic_range_compression_torch(x: Tensor, C: float = 1, clip_val: float = 1e-5) -> Tensor:
    """``ln(max(x, clip_val) * C)``, elementwise (any shape)."""
    return torch.clamp(x, min=clip_val).mul(C).log()


def dynamic_range_decompression_torch(x: Tensor, C: float = 1) -> Tensor:
    """Inverse of :func:`dynamic_range_compression_torch` above the floor: ``exp(x) / C`` (any shape)."""
    return torch.exp(x).div(C)


def spectral_normalize_torch(magnitudes: Tensor) -> Tensor:
    """Log-compress magnitudes: ``ln(max(magnitudes, 1e-5))`` (any shape)."""
    return dynamic_range_compression_torch(magnitudes)


def spectral_de_normalize_torch(magnitudes: Tensor) -> Tensor:
    """Undo :func:`spectral_normalize_torch`: ``exp(magnitudes)`` (any shape)."""
    return dynamic_range_decompression_torch(magnitudes)


def spectrogram_torch(
    y: Tensor,
    n_fft: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    center: bool = False,
    *,
    check_range: Optional[bool] = None,
) -> Tensor:
    """Linear magnitude spectrogram ``sqrt(re^2 + im^2 + 1e-6)``, as the original.

    Shapes: ``(B, T) -> (B, n_fft // 2 + 1, frames)`` (also ``(B, 1, T)``; ``(T,)`` gives
    ``(n_fft // 2 + 1, frames)``). ``sampling_rate`` is unused, as in the original.
    ``check_range`` (keyword only) overrides :func:`set_range_check` for this call.
    """
    _check_range(y, "spectrogram_torch", check_range)
    config = _spec_config(n_fft, sampling_rate, hop_size, win_size, center)
    # Contiguous like the original's output, so callers' .view()/.numpy() keep working.
    return features.spectrogram(y, config).contiguous()


def spec_to_mel_torch(
    spec: Tensor,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    fmin: float,
    fmax: Optional[float],
) -> Tensor:
    """Linear spectrogram ``(..., n_fft // 2 + 1, frames)`` -> log-mel ``(..., num_mels, frames)``.

    The filterbank is cached per ``(n_fft, num_mels, sampling_rate, fmin, fmax, dtype, device)``.
    """
    return features.spec_to_mel(spec, _filterbank_config(n_fft, num_mels, sampling_rate, fmin, fmax))


def mel_spectrogram_torch(
    y: Tensor,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    fmin: float,
    fmax: Optional[float],
    center: bool = False,
    *,
    check_range: Optional[bool] = None,
) -> Tensor:
    """Log-mel spectrogram, as the original: ``(B, T) -> (B, num_mels, frames)``.

    Also ``(B, 1, T) -> (B, num_mels, frames)`` and ``(T,) -> (num_mels, frames)``.
    ``check_range`` (keyword only) overrides :func:`set_range_check` for this call.
    """
    _check_range(y, "mel_spectrogram_torch", check_range)
    config = _config(sampling_rate, n_fft, hop_size, win_size, num_mels, fmin, fmax, center)
    return features.mel_spectrogram(y, config)


def cache_info() -> dict[str, int]:
    """Sizes of the caches behind the compat functions.

    ``constants``/``constants_maxsize``: windows and filterbanks per (config, dtype, device), the
    LRU shared with :mod:`melvoc.features`; ``configs``/``configs_maxsize``: memoised parameter sets.
    """
    info = _config.cache_info()
    return {
        "constants": features.cache_info()["size"],
        "constants_maxsize": features.cache_info()["maxsize"],
        "configs": info.currsize,
        "configs_maxsize": info.maxsize or 0,
    }


def clear_caches() -> None:
    """Drop every cached window, filterbank and parameter set (frees device memory)."""
    features.clear_cache()
    _config.cache_clear()
