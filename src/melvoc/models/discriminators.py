"""HiFi-GAN discriminators: multi-period (MPD) and multi-scale (MSD).

Both map audio ``(B, 1, T)`` (or ``(B, T)``) to :data:`~melvoc.models.base.DiscriminatorOutput`:
one logits tensor ``(B, N_i)`` per sub-discriminator and, per sub-discriminator, the list of its
feature maps (every intermediate activation, for the feature-matching loss). Channel widths are
configurable so that a small preset trains on a CPU; the published layout is ``conf/model/hifigan_v1.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from melvoc.models.base import DiscriminatorOutput, as_3d, conv_stack, run_discriminators
from melvoc.models.hifigan import LRELU_SLOPE, get_padding

__all__ = ["DiscriminatorP", "DiscriminatorS", "MultiPeriodDiscriminator", "MultiScaleDiscriminator"]

# The published MSD layers: (kernel, stride, groups); groups are reduced to divide narrower channels.
_MSD_LAYERS = ((15, 1, 1), (41, 2, 4), (41, 2, 16), (41, 4, 16), (41, 4, 16), (41, 1, 16), (5, 1, 1))


class DiscriminatorP(nn.Module):
    """Period discriminator: audio folded to ``(B, 1, T / period, period)``, 2-D convs along time.

    ``first_feature_map``: the first conv layer whose activation is a feature map (0: all, as HiFi-GAN;
    1: Vocos' MPD, which leaves the first layer's out of feature matching).
    """

    def __init__(
        self,
        period: int,
        channels: Sequence[int],
        kernel_size: int = 5,
        stride: int = 3,
        use_spectral_norm: bool = False,
        first_feature_map: int = 0,
    ) -> None:
        super().__init__()
        if period < 1:
            raise ValueError(f"MPD period {period}: must be a positive integer")
        if len(channels) < 2:
            raise ValueError(f"MPD channels {list(channels)}: need at least two layers")
        if not 0 <= first_feature_map <= len(channels):
            raise ValueError(
                f"MPD first_feature_map {first_feature_map}: must be in 0..{len(channels)} (the conv layers)"
            )
        self.first_feature_map = int(first_feature_map)
        norm = spectral_norm if use_spectral_norm else weight_norm
        self.period = int(period)
        pad = (get_padding(kernel_size), 0)
        ins = [1, *channels[:-1]]
        strides = [stride] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(
            norm(nn.Conv2d(c_in, c_out, (kernel_size, 1), (s, 1), padding=pad))
            for c_in, c_out, s in zip(ins, channels, strides)
        )
        self.conv_post = norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, 1, T) -> (logits (B, N), feature maps)``."""
        x = as_3d(audio)
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            # Reflect padding needs n_pad < t; for very short inputs fall back to zeros.
            x = F.pad(x, (0, n_pad), "reflect" if n_pad < t else "constant")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        return conv_stack(x, self.convs, self.conv_post, slope=LRELU_SLOPE, first_feature_map=self.first_feature_map)


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`DiscriminatorP` per period (HiFi-GAN: 2, 3, 5, 7, 11); ``first_feature_map`` as there."""

    def __init__(self, periods: Sequence[int], channels: Sequence[int], first_feature_map: int = 0) -> None:
        super().__init__()
        if not periods:
            raise ValueError("MPD periods is empty: give at least one period (HiFi-GAN uses 2, 3, 5, 7, 11)")
        self.discriminators = nn.ModuleList(
            DiscriminatorP(int(p), [int(c) for c in channels], first_feature_map=int(first_feature_map))
            for p in periods
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        return run_discriminators(self.discriminators, audio)


class DiscriminatorS(nn.Module):
    """Scale discriminator: grouped strided 1-D convs over raw (or average-pooled) audio."""

    def __init__(self, channels: Sequence[int], use_spectral_norm: bool = False) -> None:
        super().__init__()
        if len(channels) != len(_MSD_LAYERS):
            raise ValueError(f"MSD channels {list(channels)}: need exactly {len(_MSD_LAYERS)} values")
        norm = spectral_norm if use_spectral_norm else weight_norm
        ins = [1, *channels[:-1]]
        self.convs = nn.ModuleList()
        for c_in, c_out, (k, s, g) in zip(ins, channels, _MSD_LAYERS):
            groups = math.gcd(math.gcd(c_in, c_out), g)
            self.convs.append(norm(nn.Conv1d(c_in, c_out, k, s, groups=groups, padding=get_padding(k))))
        self.conv_post = norm(nn.Conv1d(channels[-1], 1, 3, 1, padding=1))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, 1, T) -> (logits (B, N), feature maps)``."""
        x = as_3d(audio)
        return conv_stack(x, self.convs, self.conv_post, slope=LRELU_SLOPE)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` :class:`DiscriminatorS` on audio average-pooled by 1, 2, 4, ...; the first uses spectral norm."""

    def __init__(self, scales: int, channels: Sequence[int]) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError(f"MSD scales {scales}: must be >= 1 (or drop the MSD with model.discriminators.msd=null)")
        channels = [int(c) for c in channels]
        self.discriminators = nn.ModuleList(
            DiscriminatorS(channels, use_spectral_norm=(i == 0)) for i in range(int(scales))
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        x = as_3d(audio)
        logits, fmaps = [], []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.pool(x)
            logit, fmap = d(x)
            logits.append(logit)
            fmaps.append(fmap)
        return logits, fmaps
