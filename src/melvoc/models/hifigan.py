"""HiFi-GAN generator (Kong et al., 2020): log-mel ``(B, num_mels, frames)`` -> audio ``(B, 1, frames * hop)``.

The published configurations (``config_v1.json`` ... ``config_v3.json`` of jik876/hifi-gan):

====  ==============  ==============  ========  ========  ============  =============================
name  upsample_rates  upsample_kern.  channels  resblock  resblock k.   resblock dilations
====  ==============  ==============  ========  ========  ============  =============================
V1    8, 8, 2, 2      16, 16, 4, 4    512       1         3, 7, 11      [1,3,5] x 3
V2    8, 8, 2, 2      16, 16, 4, 4    128       1         3, 7, 11      [1,3,5] x 3
V3    8, 8, 4         16, 16, 8       256       2         3, 5, 7       [1,2], [2,6], [3,12]
====  ==============  ==============  ========  ========  ============  =============================

Every convolution is weight-normalised (``torch.nn.utils.parametrizations.weight_norm``);
:meth:`HiFiGANGenerator.remove_weight_norm` folds the parametrisation into plain weights for inference.
The layouts above are configuration: ``conf/model/hifigan_v1.yaml`` ... ``hifigan_v3.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from melvoc.models.base import VocoderGenerator, fold_weight_norm

__all__ = ["LRELU_SLOPE", "HiFiGANGenerator", "ResBlock1", "ResBlock2", "get_padding"]

LRELU_SLOPE = 0.1


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd ``kernel_size`` with ``dilation``."""
    return (kernel_size * dilation - dilation) // 2


def _init_weights(module: nn.Module, std: float = 0.01) -> None:
    # The official init_weights, applied as there: after weight_norm. It does NOT give N(0, std)
    # weights. Under weight norm ``module.weight`` is derived from the parameters g and v (here a
    # parametrisation computed on access; in the official code a tensor that a pre-forward hook
    # recomputes), so normal_ fills a temporary that is thrown away, and g and v are untouched. The
    # convs keep PyTorch's default init: v ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform,
    # a = sqrt(5)) and g = ||v|| per slice along dim 0 (output channels of a Conv1d, input channels
    # of a ConvTranspose1d), as weight_norm sets g when applied, so the weight equals that default.
    # The published models were trained with this init, so it stays, and so does the call: it
    # still draws from the RNG, as the official code does.
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        module.weight.data.normal_(0.0, std)


def check_generator_layout(
    upsample_rates: Sequence[int],
    upsample_kernel_sizes: Sequence[int],
    upsample_initial_channel: int,
    resblock: str | int,
    resblock_kernel_sizes: Sequence[int],
    resblock_dilation_sizes: Sequence[Sequence[int]],
    resblock_kinds: str,
) -> tuple[list[int], list[int], str, int]:
    """Check a HiFi-GAN-style up-sampling layout (shared by HiFi-GAN and BigVGAN generators).

    Returns ``(upsample_rates, upsample_kernel_sizes, resblock, final_channels)`` as ints / str;
    raises ``ValueError`` that says what is wrong. ``resblock_kinds`` names the allowed ``resblock`` values.
    """
    upsample_rates = [int(r) for r in upsample_rates]
    upsample_kernel_sizes = [int(k) for k in upsample_kernel_sizes]
    resblock = str(resblock)
    if len(upsample_rates) != len(upsample_kernel_sizes) or not upsample_rates:
        raise ValueError(
            f"upsample_rates {upsample_rates} and upsample_kernel_sizes {upsample_kernel_sizes} must be "
            "non-empty and of the same length (one kernel per upsampling stage)"
        )
    for u, k in zip(upsample_rates, upsample_kernel_sizes):
        if u < 1 or k < u or (k - u) % 2:
            raise ValueError(
                f"upsampling stage rate {u} kernel {k}: need kernel >= rate and kernel - rate even "
                "(e.g. kernel = 2 * rate) so the stage upsamples exactly by its rate"
            )
    if len(resblock_kernel_sizes) != len(resblock_dilation_sizes) or not resblock_kernel_sizes:
        raise ValueError(
            f"resblock_kernel_sizes {list(resblock_kernel_sizes)} and resblock_dilation_sizes "
            f"{[list(d) for d in resblock_dilation_sizes]} must be non-empty and of the same length"
        )
    if resblock not in ("1", "2"):
        raise ValueError(f"resblock {resblock!r}: expected {resblock_kinds}")
    final_channels = upsample_initial_channel // 2 ** len(upsample_rates)
    if final_channels < 1:
        raise ValueError(
            f"upsample_initial_channel {upsample_initial_channel} is halved {len(upsample_rates)} times "
            f"and reaches 0 channels: use at least {2 ** len(upsample_rates)}"
        )
    return upsample_rates, upsample_kernel_sizes, resblock, final_channels


def multi_receptive_field(x: Tensor, blocks: Sequence[nn.Module]) -> Tensor:
    """The MRF step of HiFi-GAN and BigVGAN: the mean of ``blocks`` applied to the same ``x``."""
    xs = blocks[0](x)
    for b in blocks[1:]:
        xs = xs + b(x)
    return xs / len(blocks)


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock type 1: per dilation, ``x + conv1(lrelu(conv_d(lrelu(x))))``. ``(B, C, T) -> (B, C, T)``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilations: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size)))
            for _ in dilations
        )
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE))
            x = xt + x
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN ResBlock type 2 (V3): per dilation, ``x + conv_d(lrelu(x))``. ``(B, C, T) -> (B, C, T)``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilations: Sequence[int] = (1, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)))
            for d in dilations
        )
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        for c in self.convs:
            x = c(F.leaky_relu(x, LRELU_SLOPE)) + x
        return x


class HiFiGANGenerator(VocoderGenerator):
    """HiFi-GAN generator. Every argument comes from the model config (``conf/model/hifigan_*.yaml``).

    Args:
        num_mels: input mel bands.
        upsample_rates: strides of the transposed convolutions; their product is the hop size.
        upsample_kernel_sizes: kernel of each transposed convolution (``kernel - rate`` must be even
            and non-negative, so that every stage upsamples exactly by its rate).
        upsample_initial_channel: channels after ``conv_pre``; halved at every upsampling stage.
        resblock: ``"1"`` (V1/V2) or ``"2"`` (V3).
        resblock_kernel_sizes: kernel of each parallel residual block (multi-receptive-field fusion).
        resblock_dilation_sizes: dilations of each residual block.

    ``forward``: ``(B, num_mels, frames) -> (B, 1, frames * prod(upsample_rates))`` in ``[-1, 1]``.
    """

    def __init__(
        self,
        num_mels: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        upsample_initial_channel: int,
        resblock: Literal["1", "2"] | int,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        upsample_rates, upsample_kernel_sizes, resblock, final_channels = check_generator_layout(
            upsample_rates,
            upsample_kernel_sizes,
            upsample_initial_channel,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            resblock_kinds="'1' (HiFi-GAN V1/V2) or '2' (V3)",
        )

        self.num_mels = int(num_mels)
        self.upsample_rates = upsample_rates
        self.num_kernels = len(resblock_kernel_sizes)
        block = ResBlock1 if resblock == "1" else ResBlock2

        self.conv_pre = weight_norm(nn.Conv1d(num_mels, upsample_initial_channel, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            c_in = upsample_initial_channel // 2**i
            c_out = upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2)))
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block(c_out, int(rk), [int(d) for d in rd]))
        self.conv_post = weight_norm(nn.Conv1d(final_channels, 1, 7, 1, padding=3))
        self.ups.apply(_init_weights)
        self.conv_post.apply(_init_weights)

    @property
    def hop_size(self) -> int:
        """Output samples per input frame, ``prod(upsample_rates)``."""
        return math.prod(self.upsample_rates)

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, num_mels, frames) -> (B, 1, frames * hop_size)``."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = multi_receptive_field(x, self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels])
        # The original uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)

    def remove_weight_norm(self) -> "HiFiGANGenerator":
        """Fold weight norm into plain ``nn.Parameter`` weights (same outputs, faster inference). Returns ``self``."""
        fold_weight_norm(self)
        return self
