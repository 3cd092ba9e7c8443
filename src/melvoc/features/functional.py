"""The public functions: ``spectrogram``, ``spec_to_mel``, ``mel_spectrogram``, and the dispatch between
the reference path (:mod:`melvoc.features.reference`) and the CPU fast path (:mod:`melvoc.features.fast`).

CPU calls that need no gradient take the fast path (same results, faster) unless ``fast=False``.
Under ``torch.autocast`` the STFT and filterbank run in float32; float64 input stays float64.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
from torch import Tensor

from melvoc.features import fast as fast_path
from melvoc.features import reference
from melvoc.features.config import MelConfig, hann_window, mel_filterbank, min_audio_length, num_frames

__all__ = ["cache_info", "clear_cache", "compute", "mel_spectrogram", "spec_to_mel", "spectrogram"]


def spectrogram(audio: Tensor, config: MelConfig) -> Tensor:
    """Linear magnitude spectrogram, ``sqrt(re^2 + im^2 + eps)``.

    Shapes: ``(T,) -> (n_fft // 2 + 1, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, n_fft // 2 + 1, frames)``.
    """
    return compute(audio, config, _constants(config, _compute_dtype(audio.dtype), audio.device)[0], None, False)


def spec_to_mel(spec: Tensor, config: MelConfig) -> Tensor:
    """Linear spectrogram ``(..., n_fft // 2 + 1, frames)`` -> log-mel ``(..., num_mels, frames)``."""
    if spec.dim() < 2 or spec.shape[-2] != config.n_freqs:
        expected = f"(..., {config.n_freqs}, frames) for n_fft={config.n_fft}"
        raise ValueError(f"spectrogram of shape {tuple(spec.shape)}: expected {expected}")
    with _autocast_off(spec.device.type):
        spec = spec.to(_compute_dtype(spec.dtype))
        return reference.log_compress(torch.matmul(_constants(config, spec.dtype, spec.device)[1], spec), config)


def mel_spectrogram(audio: Tensor, config: MelConfig, *, fast: bool = True) -> Tensor:
    """Log-mel spectrogram.

    Shapes: ``(T,) -> (num_mels, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, num_mels, frames)``.
    float16/bfloat16 input (or autocast) is computed and returned in float32; float64 stays float64.
    ``fast``: CPU calls without autograd take :mod:`melvoc.features.fast` (same results).
    """
    window, basis = _constants(config, _compute_dtype(audio.dtype), audio.device)
    return compute(audio, config, window, basis, fast)


def compute(audio: Tensor, config: MelConfig, window: Tensor, basis: Optional[Tensor], fast: bool) -> Tensor:
    """Log-mel (``basis`` given) or magnitude of ``(T,)``, ``(B, T)`` or ``(B, 1, T)`` audio, unbatched like it."""
    with _autocast_off(audio.device.type):
        batch = _audio_batch(audio, config)
        window = window if window.dtype == batch.dtype else window.to(batch.dtype)  # .to() costs ~3 us
        if batch.shape[0] == 0:  # MKL's FFT rejects an empty batch; "+ sum()" keeps the graph
            rows = config.n_freqs if basis is None else config.num_mels
            out = batch.new_zeros(0, rows, num_frames(batch.shape[-1], config)) + batch.sum()
        elif basis is not None and fast and fast_path.applies(batch, window, basis):
            out = fast_path.log_mel(batch, window, basis, config)
        elif basis is None:
            out = reference.stft_magnitude(batch, window, config)
        else:
            out = reference.log_mel(batch, window, basis.to(batch.dtype), config)
        return out if audio.dim() != 1 else out.squeeze(0)


@functools.lru_cache(maxsize=32)
def _constants(config: MelConfig, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Window and filterbank of the functional API, per (config, dtype, device).

    Made outside ``inference_mode``, so that constants first made under it can still be saved for a backward.
    """
    with torch.inference_mode(False):
        return hann_window(config).to(device, dtype), mel_filterbank(config).to(device, dtype)


def cache_info() -> dict[str, int]:
    """Sizes and bounds of the functional API's constants cache and of the fast path's CPU buffers."""
    info = _constants.cache_info()
    return {"size": info.currsize, "maxsize": info.maxsize or 0, **fast_path.cache_info()}


def clear_cache() -> None:
    """Drop every cached window, filterbank and CPU buffer (frees their memory)."""
    _constants.cache_clear()
    fast_path.clear_cache()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float16/bfloat16 -> float32; float64 stays


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Under autocast the STFT and filterbank run in float32; outside it, no context (entering one costs ~5 us)."""
    enabled = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


def _audio_batch(audio: Tensor, config: MelConfig) -> Tensor:
    """``(T,)``, ``(B, T)`` or ``(B, 1, T)`` -> ``(B, T)`` in the compute dtype, checked."""
    if audio.dim() in (1, 2) or (audio.dim() == 3 and audio.shape[1] == 1):
        batch = audio if audio.dim() == 2 else audio.reshape(-1, audio.shape[-1])
    else:
        raise ValueError(f"audio of shape {tuple(audio.shape)}: expected (T,), (B, T) or (B, 1, T)")
    if not batch.is_floating_point():
        raise ValueError(f"audio dtype {audio.dtype}: expected float samples in [-1, 1] (divide integer PCM by 32768)")
    minimum = min_audio_length(config)
    if batch.shape[-1] < minimum:
        raise ValueError(
            f"audio of {batch.shape[-1]} samples is too short for n_fft={config.n_fft}, "
            f"hop_size={config.hop_size}, pad_mode={config.pad_mode!r}: need at least {minimum} samples"
        )
    return batch if batch.dtype in (torch.float32, torch.float64) else batch.to(_compute_dtype(batch.dtype))
