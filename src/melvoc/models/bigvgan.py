"""BigVGAN generator (Lee et al., 2023): log-mel ``(B, num_mels, frames)`` -> audio ``(B, 1, frames * hop)``.

HiFi-GAN's layout (``conv_pre``, transposed-conv up-sampling stages each followed by parallel residual
blocks whose outputs are averaged, ``conv_post``) with the residual blocks replaced by AMP blocks:
anti-aliased periodic activations (:mod:`melvoc.models.activations`) instead of leaky ReLUs, and no
activation before the up-sampling convolutions. Published configurations (NVIDIA/BigVGAN ``configs/``):

==============================  ===================  ===================  ========  ==========  ==============
name                            upsample_rates       upsample_kernels     channels  activation  tanh / bias
==============================  ===================  ===================  ========  ==========  ==============
v1 24 kHz 100-band (112 M)      4, 4, 2, 2, 2, 2     8, 8, 4, 4, 4, 4     1536      snakebeta   yes / yes
v1 base 24 kHz 100-band (14 M)  8, 8, 2, 2           16, 16, 4, 4         512       snakebeta   yes / yes
v2 24 kHz 100-band 256x         4, 4, 2, 2, 2, 2     8, 8, 4, 4, 4, 4     1536      snakebeta   no / no
v2 44 kHz 128-band 512x         8, 4, 2, 2, 2, 2     16, 8, 4, 4, 4, 4    1536      snakebeta   no / no
==============================  ===================  ===================  ========  ==========  ==============

All use resblock ``"1"``, kernels 3, 7, 11 with dilations 1, 3, 5 and ``snake_logscale: true``.
Without the final tanh, the output is clamped to ``[-1, 1]`` (v2).

``fast_activation`` (default on) computes the anti-aliased activations with
:class:`~melvoc.models.activations_fast.FastAntiAliasedActivation` (block matrix products, a
hand-written backward) instead of the reference :class:`~melvoc.models.activations.AntiAliasedActivation`;
same parameters, same state dict, the same function within float32 rounding (``tests/test_bigvgan_fast.py``).
Once weight norm is folded for inference (:meth:`BigVGANGenerator.remove_weight_norm`), the same switch
also runs the AMP blocks' and up-sampling convolutions as per-tap matrix products on tap-major weights
(:mod:`melvoc.models.conv_fast`, ``tests/test_conv_fast.py``).

Every convolution is weight-normalised (``torch.nn.utils.parametrizations.weight_norm``). The peers
re-initialise their convolutions with N(0, 0.01) *after* applying weight norm, which only overwrites a
derived tensor and so has no effect: PyTorch's default initialisation is what they really train from,
and what this module keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from melvoc.models.activations import AntiAliasedActivation, Snake, SnakeBeta
from melvoc.models.activations_fast import FastAntiAliasedActivation
from melvoc.models.base import VocoderGenerator, fold_weight_norm
from melvoc.models.conv_fast import conv1d_taps, conv_transpose1d_taps, tap_major_
from melvoc.models.hifigan import check_generator_layout, multi_receptive_field

__all__ = ["AMPBlock1", "AMPBlock2", "BigVGANGenerator"]

_ACTIVATIONS = {"snake": Snake, "snakebeta": SnakeBeta}


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def _conv(channels: int, kernel_size: int, dilation: int) -> nn.Module:
    return weight_norm(
        nn.Conv1d(channels, channels, kernel_size, 1, dilation=dilation, padding=_same_padding(kernel_size, dilation))
    )


def _activation(kind: str, channels: int, logscale: bool, fast: bool) -> AntiAliasedActivation:
    anti_aliased = FastAntiAliasedActivation if fast else AntiAliasedActivation
    return anti_aliased(_ACTIVATIONS[kind](channels, logscale=logscale))


class AMPBlock1(nn.Module):
    """AMP block type 1: per dilation ``d``, ``x + conv_1(act(conv_d(act(x))))``. ``(B, C, T) -> (B, C, T)``.

    Args:
        channels: ``C``.
        kernel_size: kernel of every convolution.
        dilations: one pair of convolutions per dilation (the second is undilated).
        activation: ``"snake"`` or ``"snakebeta"``, anti-aliased.
        snake_logscale: the activation parameters are stored as logarithms.
        fast_activation: :class:`FastAntiAliasedActivation` instead of the reference :class:`AntiAliasedActivation`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 3, 5),
        activation: str = "snakebeta",
        snake_logscale: bool = True,
        fast_activation: bool = True,
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, kernel_size, int(d)) for d in dilations)
        self.convs2 = nn.ModuleList(_conv(channels, kernel_size, 1) for _ in dilations)
        self.acts1 = nn.ModuleList(
            _activation(activation, channels, snake_logscale, fast_activation) for _ in dilations
        )
        self.acts2 = nn.ModuleList(
            _activation(activation, channels, snake_logscale, fast_activation) for _ in dilations
        )
        self.fast = bool(fast_activation)

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.acts1, self.acts2):
                x = conv1d_taps(a2(conv1d_taps(a1(x), c1)), c2, residual=x)
            return x
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.acts1, self.acts2):
            x = x + c2(a2(c1(a1(x))))
        return x


class AMPBlock2(nn.Module):
    """AMP block type 2: per dilation ``d``, ``x + conv_d(act(x))``. ``(B, C, T) -> (B, C, T)``.

    Arguments as :class:`AMPBlock1`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 3, 5),
        activation: str = "snakebeta",
        snake_logscale: bool = True,
        fast_activation: bool = True,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels, kernel_size, int(d)) for d in dilations)
        self.acts = nn.ModuleList(
            _activation(activation, channels, snake_logscale, fast_activation) for _ in dilations
        )
        self.fast = bool(fast_activation)

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            for conv, act in zip(self.convs, self.acts):
                x = conv1d_taps(act(x), conv, residual=x)
            return x
        for conv, act in zip(self.convs, self.acts):
            x = x + conv(act(x))
        return x


class BigVGANGenerator(VocoderGenerator):
    """BigVGAN generator; the arguments are the fields of BigVGAN's ``config.json``.

    Args:
        num_mels: input mel bands.
        upsample_rates: strides of the transposed convolutions; their product is the hop size.
        upsample_kernel_sizes: kernel of each transposed convolution (``kernel - rate`` even, ``>= 0``).
        upsample_initial_channel: channels after ``conv_pre``; halved at every up-sampling stage.
        resblock: ``"1"`` (:class:`AMPBlock1`, every published model) or ``"2"`` (:class:`AMPBlock2`).
        resblock_kernel_sizes: kernel of each parallel AMP block.
        resblock_dilation_sizes: dilations of each AMP block.
        activation: ``"snakebeta"`` (published) or ``"snake"``.
        snake_logscale: activation parameters stored as logarithms (published: true).
        use_tanh_at_final: ``tanh`` on the output (v1); otherwise a clamp to ``[-1, 1]`` (v2).
        use_bias_at_final: bias in ``conv_post`` (v1: yes, v2: no).
        fast_activation: compute the anti-aliased activations with :class:`FastAntiAliasedActivation`
            (the default; folded for inference, also the convolutions of :mod:`melvoc.models.conv_fast`)
            or with the reference :class:`AntiAliasedActivation` and torch's convolutions (``false``). Not a field
            of BigVGAN's config: it chooses how the same function is computed, so checkpoints made
            either way are interchangeable.

    The defaults are the published v2 24 kHz 100-band 256x model. ``forward``:
    ``(B, num_mels, frames) -> (B, 1, frames * hop_size)``.
    """

    execution_options = ("fast_activation",)

    def __init__(
        self,
        num_mels: int = 100,
        upsample_rates: Sequence[int] = (4, 4, 2, 2, 2, 2),
        upsample_kernel_sizes: Sequence[int] = (8, 8, 4, 4, 4, 4),
        upsample_initial_channel: int = 1536,
        resblock: Literal["1", "2"] | int = "1",
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
        resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        activation: Literal["snake", "snakebeta"] = "snakebeta",
        snake_logscale: bool = True,
        use_tanh_at_final: bool = False,
        use_bias_at_final: bool = False,
        fast_activation: bool = True,
    ) -> None:
        super().__init__()
        upsample_rates, upsample_kernel_sizes, resblock, final_channels = check_generator_layout(
            upsample_rates,
            upsample_kernel_sizes,
            upsample_initial_channel,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            resblock_kinds="'1' (AMPBlock1, published models) or '2' (AMPBlock2)",
        )
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {sorted(_ACTIVATIONS)}")

        self.num_mels = int(num_mels)
        self.upsample_rates = upsample_rates
        self.num_kernels = len(resblock_kernel_sizes)
        self.use_tanh_at_final = bool(use_tanh_at_final)
        self.fast_activation = bool(fast_activation)
        block = AMPBlock1 if resblock == "1" else AMPBlock2

        self.conv_pre = weight_norm(nn.Conv1d(self.num_mels, upsample_initial_channel, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            c_in = upsample_initial_channel // 2**i
            c_out = upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(weight_norm(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2)))
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(
                    block(c_out, int(rk), [int(d) for d in rd], activation, snake_logscale, self.fast_activation)
                )
        self.activation_post = _activation(activation, final_channels, snake_logscale, self.fast_activation)
        self.conv_post = weight_norm(nn.Conv1d(final_channels, 1, 7, 1, padding=3, bias=bool(use_bias_at_final)))

    @property
    def hop_size(self) -> int:
        """Output samples per input frame, ``prod(upsample_rates)``."""
        return math.prod(self.upsample_rates)

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, num_mels, frames) -> (B, 1, frames * hop_size)``."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = conv_transpose1d_taps(x, up) if self.fast_activation else up(x)
            x = multi_receptive_field(x, self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels])
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def remove_weight_norm(self) -> "BigVGANGenerator":
        """Fold weight norm into plain weights (still ``nn.Parameter``); same outputs. Returns ``self``.

        On the fast path the AMP blocks' and up-sampling weights are then stored tap-major
        (:mod:`melvoc.models.conv_fast`), same values and shapes, for the inference products."""
        fold_weight_norm(self)
        if self.fast_activation:
            for module in (*self.ups, *(c for block in self.resblocks for c in block.modules() if isinstance(c, nn.Conv1d))):
                tap_major_(module)
        return self
