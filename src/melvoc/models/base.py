"""The contracts every vocoder family implements, so one training module, loader and exporter serve all.

Generator: ``forward(mel)`` maps ``(B, num_mels, frames)`` log-mels to ``(B, 1, frames * hop_size)``
audio. Discriminator: ``forward(audio)`` maps ``(B, 1, T)`` audio to ``(logits, feature_maps)``,
one logits tensor and one list of feature maps per sub-discriminator.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from melvoc.features import MelConfig

__all__ = ["DiscriminatorOutput", "VocoderGenerator", "fold_weight_norm"]

#: ``(logits per sub-discriminator, feature maps per sub-discriminator)``.
DiscriminatorOutput = tuple[list[Tensor], list[list[Tensor]]]


class VocoderGenerator(nn.Module):
    """Base class of melvoc generators: ``(B, num_mels, frames) -> (B, 1, frames * hop_size)``.

    Subclasses set ``self.num_mels`` in ``__init__`` and implement :attr:`hop_size` and ``forward``.
    ``config`` is the :class:`~melvoc.features.MelConfig` the input mels must have; loaders and the
    training module attach it (``None`` for a bare generator).
    """

    num_mels: int
    config: Optional[MelConfig] = None

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
