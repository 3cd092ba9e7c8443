"""Official checkpoints of the peer projects (jik876/hifi-gan, NVIDIA/BigVGAN, gemelo-ai/vocos), read in their own formats.

Each family module (``hifigan``, ``bigvgan``, ``vocos``) provides ``matches(path) -> bool``, a cheap
layout check, and ``read(path) -> PeerCheckpoint``, which maps the peer's config to a melvoc
generator config (a Hydra ``_target_`` node) and a :class:`~melvoc.features.MelConfig`, and the
peer's weights to melvoc's parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor

from melvoc.features import MelConfig

__all__ = ["PeerCheckpoint", "PeerCheckpointError"]


class PeerCheckpointError(ValueError):
    """A peer checkpoint that cannot be read; the message names the file, what it holds and the fix."""


@dataclass
class PeerCheckpoint:
    """A peer's checkpoint mapped to melvoc.

    Attributes:
        path: the file or folder given.
        family: ``"hifigan"``, ``"bigvgan"`` or ``"vocos"``.
        features: the peer's mel features as a ``MelConfig``.
        generator: the melvoc generator as a Hydra node, ``{"_target_": "melvoc.models....", **kwargs}``.
        generator_state: ``state_dict`` of that generator as its constructor builds it.
        discriminators: name -> Hydra node of melvoc discriminators, when the peer's were found.
        discriminator_states: name -> ``state_dict`` of those discriminators.
        metadata: what the peer's files say besides (step, epoch, source files).
    """

    path: Any
    family: str
    features: MelConfig
    generator: dict[str, Any]
    generator_state: dict[str, Tensor]
    discriminators: Optional[dict[str, dict[str, Any]]] = None
    discriminator_states: Optional[dict[str, dict[str, Tensor]]] = None
    metadata: dict[str, Any] = field(default_factory=dict)
