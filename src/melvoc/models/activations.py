"""Periodic activations and their anti-aliased form, as BigVGAN (Lee et al., 2023) uses them.

* :class:`Snake`: ``x + 1/a * sin^2(a x)`` with one trainable ``a`` per channel (Ziyin et al., 2020).
* :class:`SnakeBeta`: ``x + 1/b * sin^2(a x)``, frequency ``a`` and magnitude ``b`` per channel.
  With ``logscale=True`` the parameters hold ``log a`` (and ``log b``), initialised to 0.
* :class:`AntiAliasedActivation`: 2x up-sampling, the activation, 2x down-sampling, both resamplers
  with the same Kaiser-windowed sinc low-pass (StyleGAN3's alias-free recipe): the activation's
  harmonics above the input's Nyquist frequency are filtered out instead of folding back.

Everything is plain torch (grouped convolutions); the filter is a non-persistent buffer computed
from its three parameters, so it follows ``.to(device)`` and stays out of checkpoints.
"""

from __future__ import annotations

import math

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["AntiAliasedActivation", "Snake", "SnakeBeta", "kaiser_sinc_filter"]

# Keeps 1/a finite where a trained a reaches 0; the peers' value, part of the function they learned.
_NO_DIV_BY_ZERO = 1e-9


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> Tensor:
    """Kaiser-windowed sinc low-pass ``(kernel_size,)`` float64, normalised to a DC gain of exactly 1.

    Args:
        cutoff: cut-off as a fraction of the sample rate (0.25 = half the Nyquist frequency).
        half_width: half the transition band, same unit; sets the Kaiser ``beta`` by Kaiser's formula
            for the attenuation ``A = 2.285 (N/2 - 1) pi (4 half_width) + 7.95`` dB.
        kernel_size: taps; an even size puts the centre between two taps (time ``k + 0.5``).
    """
    if not 0 < cutoff <= 0.5:
        raise ValueError(f"low-pass cutoff {cutoff}: must be in (0, 0.5] of the sample rate")
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta, dtype=torch.float64)
    if kernel_size % 2 == 0:
        time = torch.arange(-half, half, dtype=torch.float64) + 0.5
    else:
        time = torch.arange(kernel_size, dtype=torch.float64) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    # Exact unit DC gain: a constant input must pass unchanged, or every layer would leak a DC offset.
    return taps / taps.sum()


def _channel_param(param: Tensor, logscale: bool) -> Tensor:
    param = param.view(1, -1, 1)
    return param.exp() if logscale else param


class Snake(nn.Module):
    """``x + 1/a * sin^2(a x)``, one ``a`` per channel. ``(B, C, T) -> (B, C, T)``.

    Args:
        channels: ``C``.
        logscale: the parameter stores ``log a`` (initialised to 0, i.e. ``a = 1``).
    """

    def __init__(self, channels: int, logscale: bool = False) -> None:
        super().__init__()
        self.logscale = bool(logscale)
        init = torch.zeros if self.logscale else torch.ones
        self.alpha = nn.Parameter(init(int(channels)))

    def forward(self, x: Tensor) -> Tensor:
        alpha = _channel_param(self.alpha, self.logscale)
        return x + torch.sin(x * alpha).pow(2) / (alpha + _NO_DIV_BY_ZERO)


class SnakeBeta(nn.Module):
    """``x + 1/b * sin^2(a x)``, frequency ``a`` and magnitude ``b`` per channel. ``(B, C, T) -> (B, C, T)``.

    Args:
        channels: ``C``.
        logscale: the parameters store ``log a`` and ``log b`` (initialised to 0).
    """

    def __init__(self, channels: int, logscale: bool = False) -> None:
        super().__init__()
        self.logscale = bool(logscale)
        init = torch.zeros if self.logscale else torch.ones
        self.alpha = nn.Parameter(init(int(channels)))
        self.beta = nn.Parameter(init(int(channels)))

    def forward(self, x: Tensor) -> Tensor:
        alpha = _channel_param(self.alpha, self.logscale)
        beta = _channel_param(self.beta, self.logscale)
        return x + torch.sin(x * alpha).pow(2) / (beta + _NO_DIV_BY_ZERO)


class AntiAliasedActivation(nn.Module):
    """Up-sample 2x, apply ``activation``, low-pass and down-sample 2x. ``(B, C, T) -> (B, C, T)``.

    Both resamplers use one Kaiser-sinc low-pass (cut-off a quarter of the up-sampled rate, half
    width 0.15, ``kernel_size`` taps) and replicate padding, as BigVGAN's torch path does, so that
    published weights give the published outputs.

    Args:
        activation: any elementwise ``(B, C, T) -> (B, C, T)`` module (``Snake``, ``SnakeBeta``).
        kernel_size: taps of the low-pass; even (12 in BigVGAN).
    """

    ratio = 2

    def __init__(self, activation: nn.Module, kernel_size: int = 12) -> None:
        super().__init__()
        if kernel_size < 2 * self.ratio or kernel_size % 2:
            raise ValueError(f"anti-aliasing kernel_size {kernel_size}: must be even and >= {2 * self.ratio}")
        self.act = activation
        # The channel count known at construction (Snake's alpha), so that the ONNX exporter traces a
        # constant kernel shape; x.size(1) would become a graph value ("kernel of unknown shape").
        alpha = getattr(activation, "alpha", None)
        self.channels: Optional[int] = int(alpha.numel()) if isinstance(alpha, Tensor) else None
        self.kernel_size = int(kernel_size)
        taps = kaiser_sinc_filter(0.5 / self.ratio, 0.6 / self.ratio, self.kernel_size)
        self.register_buffer("filter", taps.to(torch.float32).view(1, 1, -1), persistent=False)

    def upsample(self, x: Tensor) -> Tensor:
        """Zero-stuffing transposed convolution with the low-pass (gain ``ratio``): ``(B, C, T) -> (B, C, 2T)``."""
        k, r = self.kernel_size, self.ratio
        pad = k // r - 1
        x = F.pad(x, (pad, pad), mode="replicate")
        channels = self.channels or x.size(1)
        weight = (self.filter * r).to(x.dtype).expand(channels, -1, -1)
        x = F.conv_transpose1d(x, weight, stride=r, groups=channels)
        # Crop the transient of the replicate padding and the filter's delay, leaving exactly r*T samples.
        left = pad * r + (k - r) // 2
        right = pad * r + (k - r + 1) // 2
        return x[..., left : x.size(-1) - right]

    def downsample(self, x: Tensor) -> Tensor:
        """Low-pass, keep every second sample: ``(B, C, 2T) -> (B, C, T)``."""
        k = self.kernel_size
        x = F.pad(x, (k // 2 - 1, k // 2), mode="replicate")
        channels = self.channels or x.size(1)
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        return F.conv1d(x, weight, stride=self.ratio, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.act(self.upsample(x)))
