"""The contracts every vocoder family implements, so one training module, loader and exporter serve all.

Generator: ``forward(mel)`` maps ``(B, num_mels, frames)`` log-mels to ``(B, 1, frames * hop_size)``
audio. Discriminator: ``forward(audio)`` maps ``(B, 1, T)`` audio to ``(logits, feature_maps)``,
one logits tensor and one list of feature maps per sub-discriminator.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from melvoc.features import MelConfig

__all__ = ["DiscriminatorOutput", "VocoderGenerator"]

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
