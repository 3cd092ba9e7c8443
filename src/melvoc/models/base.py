"""The contracts every vocoder family implements, so one training module, loader and exporter serve all.

Generator: ``forward(mel)`` maps ``(B, num_mels, frames)`` log-mels to ``(B, 1, frames * hop_size)``
audio. Discriminator: ``forward(audio)`` maps ``(B, 1, T)`` audio to ``(logits, feature_maps)``,
one logits tensor and one list of feature maps per sub-discriminator.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from melvoc.features import MelConfig

__all__ = [
    "DiscriminatorOutput",
    "VocoderGenerator",
    "as_3d",
    "conv_stack",
    "fold_weight_norm",
    "run_discriminators",
]

#: ``(logits per sub-discriminator, feature maps per sub-discriminator)``.
DiscriminatorOutput = tuple[list[Tensor], list[list[Tensor]]]


def as_3d(audio: Tensor) -> Tensor:
    """``(B, T)`` or ``(B, 1, T)`` audio as ``(B, 1, T)``; anything else raises ``ValueError``."""
    if audio.dim() == 2:
        return audio.unsqueeze(1)
    if audio.dim() != 3 or audio.size(1) != 1:
        raise ValueError(f"discriminator input must be (B, T) or (B, 1, T) audio, got shape {tuple(audio.shape)}")
    return audio


def conv_stack(
    x: Tensor,
    convs: Iterable[nn.Module],
    conv_post: nn.Module,
    *,
    slope: float,
    first_feature_map: int = 0,
    output_is_feature_map: bool = True,
) -> tuple[Tensor, list[Tensor]]:
    """A sub-discriminator's leaky-ReLU conv stack, then its output conv: ``(logits (B, N), feature maps)``.

    The feature maps are the activations of the layers from ``first_feature_map`` on, and the output
    conv's result unless ``output_is_feature_map=False`` (BigVGAN's CQT-D).
    """
    fmap = []
    for i, conv in enumerate(convs):
        x = F.leaky_relu(conv(x), slope)
        if i >= first_feature_map:
            fmap.append(x)
    x = conv_post(x)
    if output_is_feature_map:
        fmap.append(x)
    return x.flatten(1), fmap


def run_discriminators(discriminators: Iterable[nn.Module], audio: Tensor) -> DiscriminatorOutput:
    """Every sub-discriminator on the same ``audio``: ``([logits], [feature maps])``, one entry each."""
    logits, fmaps = [], []
    for d in discriminators:
        logit, fmap = d(audio)
        logits.append(logit)
        fmaps.append(fmap)
    return logits, fmaps


class VocoderGenerator(nn.Module):
    """Base class of melvoc generators: ``(B, num_mels, frames) -> (B, 1, frames * hop_size)``.

    Subclasses set ``self.num_mels`` in ``__init__`` and implement :attr:`hop_size` and ``forward``.
    ``config`` is the :class:`~melvoc.features.MelConfig` the input mels must have; loaders and the
    training module attach it (``None`` for a bare generator).
    """

    num_mels: int
    config: Optional[MelConfig] = None
    #: Constructor arguments that choose how the function is computed, not which function (a fast path's
    #: switch): checkpoints that differ only in them are interchangeable, so fine-tuning ignores them.
    execution_options: ClassVar[tuple[str, ...]] = ()

    @property
    def hop_size(self) -> int:
        """Output samples per input frame."""
        raise NotImplementedError

    def remove_weight_norm(self) -> "VocoderGenerator":
        """Fold weight norm into plain weights, keeping them ``nn.Parameter``; a no-op without it. Returns ``self``."""
        return self


def fold_weight_norm(module: nn.Module) -> None:
    """Replace every weight-norm parametrisation in ``module`` by its plain weight ``g * v / ||v||``.

    The folded weights stay ``nn.Parameter`` (requiring grad when the norm's parameters did) even
    under ``torch.no_grad()`` or ``torch.inference_mode()``, where torch's own
    ``remove_parametrizations`` would register them as buffers and ``parameters()`` would lose them.
    """
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            requires_grad = any(p.requires_grad for p in sub.parametrizations.weight.parameters())
            # inference_mode(False): the folded weight must be a normal tensor, usable by autograd later.
            with torch.inference_mode(False), torch.no_grad():
                parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
                sub.weight = nn.Parameter(sub.weight.detach(), requires_grad=requires_grad)
