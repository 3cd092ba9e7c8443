"""The reference path: audio -> log-mel in plain torch, what autograd, GPUs and ``torch.compile`` run::

    audio (B, T) --pad (n_fft - hop) // 2 [+ center]--> frames (B, F, n_fft) * hann(win_size)
        --rfft--> sqrt(re^2 + im^2 + eps) over the filterbank's bins (B, bins, F)
        --mel filterbank--> log(clamp(mel, clip_val)) (B, num_mels, F)

The pre-pad is ``int((n_fft - hop_size) / 2)`` (truncation for odd differences, as the original).
:mod:`melvoc.features.fast` computes the same on the CPU without autograd, faster.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melvoc.features.config import MelConfig

__all__ = ["log_compress", "log_mel", "pad_for_stft", "stft_magnitude"]


def log_mel(batch: Tensor, window: Tensor, basis: Tensor, config: MelConfig) -> Tensor:
    """``(B, T)`` audio -> log-mel ``(B, num_mels, F)``; ``window``, ``basis`` in the audio's dtype."""
    band = config.mel_bins
    magnitude = stft_magnitude(batch, window, config, band)  # (B, bins, F)
    return log_compress(torch.matmul(basis[:, band], magnitude), config)


def log_compress(mel: Tensor, config: MelConfig) -> Tensor:
    """``log(clamp(mel, clip_val))`` in the config's base (the original's ``dynamic_range_compression_torch``)."""
    mel = torch.clamp(mel, min=config.clip_val)
    return torch.log(mel) if config.log_base == "e" else torch.log10(mel)


def stft_magnitude(batch: Tensor, window: Tensor, config: MelConfig, band: slice = slice(None)) -> Tensor:
    """``(B, T)`` -> ``sqrt(re^2 + im^2 + eps)`` over the STFT bins in ``band``: ``(B, bins, F)``."""
    frames = pad_for_stft(batch, config).unfold(-1, config.n_fft, config.hop_size) * window
    return _RfftMagnitude.apply(frames, band, config.eps)


def pad_for_stft(batch: Tensor, config: MelConfig) -> Tensor:
    """The pre-pad, then ``center``'s reflect pad of ``n_fft // 2`` (as ``torch.stft``): ``(B, T) -> (B, L)``."""
    pad = config.pre_pad
    if pad:
        batch = _reflect_pad(batch, pad) if config.pad_mode == "reflect" else nn.functional.pad(batch, (pad, pad))
    return _reflect_pad(batch, config.n_fft // 2) if config.center else batch


def _reflect_pad(batch: Tensor, pad: int) -> Tensor:
    """``F.pad(..., mode="reflect")`` on ``(B, T)``; a flip-and-concatenate is ~4x faster on the CPU."""
    left, right = batch.narrow(-1, 1, pad).flip(-1), batch.narrow(-1, batch.shape[-1] - pad - 1, pad).flip(-1)
    return torch.cat([left, batch, right], dim=-1)


class _RfftMagnitude(torch.autograd.Function):
    """Windowed frames ``(B, F, n_fft)`` -> ``sqrt(|rfft|^2 + eps)`` over ``band``, as ``(B, bins, F)``.

    A function of its own for its backward: one ``irfft``, where autograd's generic rfft gradient
    is a full complex FFT plus zero-filled copies (2x slower forward+backward in the benchmark).
    ``re*re + im*im`` is bit-identical to the original's ``view_as_real(X).pow(2).sum(-1)``.
    """

    @staticmethod
    def forward(ctx, frames: Tensor, band: slice, eps: float) -> Tensor:  # type: ignore[override]
        spectrum = torch.fft.rfft(frames, dim=-1)[..., band]
        real, imag = torch.view_as_real(spectrum).unbind(-1)
        magnitude = torch.sqrt(real * real + imag * imag + eps).transpose(1, 2).contiguous()
        ctx.save_for_backward(spectrum, magnitude)
        ctx.band, ctx.eps, ctx.n_fft = band, eps, frames.shape[-1]
        return magnitude

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        spectrum, magnitude = ctx.saved_tensors
        # d|X_k|/dx_n = Re(X_k e^{2 pi i k n / N}) / |X_k|: an unnormalised inverse DFT of grad * X / |X|
        # over the one-sided bins, i.e. irfft(norm="forward") with the bins it counts twice halved.
        scale = grad / magnitude
        if ctx.eps == 0:  # silence: |X| = 0, where the gradient is taken as 0
            scale = torch.where(magnitude > 0, scale, torch.zeros_like(scale))
        n_bins = ctx.n_fft // 2 + 1
        start, stop, _ = ctx.band.indices(n_bins)
        bins = torch.arange(start, stop, device=scale.device)
        half = spectrum * (scale.transpose(1, 2) * torch.where((bins > 0) & (bins < ctx.n_fft / 2), 0.5, 1.0))
        half = nn.functional.pad(torch.view_as_real(half), (0, 0, start, n_bins - stop))
        return torch.fft.irfft(torch.view_as_complex(half), n=ctx.n_fft, dim=-1, norm="forward"), None, None
