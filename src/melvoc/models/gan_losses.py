"""GAN losses of the vocoder families: least-squares (LSGAN), hinge, and feature matching.

Each takes the outputs of one discriminator (:data:`~melvoc.models.base.DiscriminatorOutput`): a
list of logits and a list of feature-map lists, one entry per sub-discriminator, and sums over the
sub-discriminators (:class:`~melvoc.models.GANVocoder` turns the sum into a mean where a recipe
averages, see :data:`SUB_DISCRIMINATOR_REDUCTIONS`). All losses are computed in float32 whatever the discriminator's output dtype
(bf16/fp16 under autocast), so that squared logits and sums over ~50 feature maps cannot overflow
or lose precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "ADVERSARIAL_LOSSES",
    "SUB_DISCRIMINATOR_REDUCTIONS",
    "check_adversarial_loss",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
]

#: The adversarial loss kinds (``model.adversarial_loss``).
ADVERSARIAL_LOSSES = ("lsgan", "hinge")
AdversarialLoss = Literal["lsgan", "hinge"]
#: How one discriminator's losses combine over its sub-discriminators (``model.sub_discriminator_reduction``):
#: ``sum`` (HiFi-GAN, BigVGAN) or ``mean`` (Vocos divides each sum by the number of sub-discriminators).
SUB_DISCRIMINATOR_REDUCTIONS = ("sum", "mean")


def check_adversarial_loss(kind: str) -> None:
    """Raise ``ValueError`` unless ``kind`` is one of :data:`ADVERSARIAL_LOSSES`."""
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"model.adversarial_loss = {kind!r}: expected one of {', '.join(ADVERSARIAL_LOSSES)}")


def discriminator_loss(
    real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor], kind: AdversarialLoss = "lsgan"
) -> Tensor:
    """Discriminator loss summed over sub-discriminators ``k`` (a float32 scalar).

    ``lsgan`` (HiFi-GAN, BigVGAN): ``mean((1 - D_k(y))^2) + mean(D_k(y_hat)^2)``;
    ``hinge`` (MelGAN, Vocos): ``mean(relu(1 - D_k(y))) + mean(relu(1 + D_k(y_hat)))``.
    """
    check_adversarial_loss(kind)
    if len(real_logits) != len(fake_logits):
        raise ValueError(f"{len(real_logits)} real vs {len(fake_logits)} fake discriminator outputs")
    loss = real_logits[0].new_zeros((), dtype=torch.float32)
    for dr, dg in zip(real_logits, fake_logits):
        dr, dg = dr.float(), dg.float()
        if kind == "lsgan":
            loss = loss + torch.mean((1.0 - dr) ** 2) + torch.mean(dg**2)
        else:
            loss = loss + torch.mean(F.relu(1.0 - dr)) + torch.mean(F.relu(1.0 + dg))
    return loss


def generator_loss(fake_logits: Sequence[Tensor], kind: AdversarialLoss = "lsgan") -> Tensor:
    """Generator (adversarial) loss summed over sub-discriminators ``k`` (a float32 scalar).

    ``lsgan``: ``mean((1 - D_k(y_hat))^2)``; ``hinge``: ``mean(relu(1 - D_k(y_hat)))``, Vocos'
    form (MelGAN's is the unclamped ``-mean(D_k(y_hat))``).
    """
    check_adversarial_loss(kind)
    loss = fake_logits[0].new_zeros((), dtype=torch.float32)
    for dg in fake_logits:
        if kind == "lsgan":
            loss = loss + torch.mean((1.0 - dg.float()) ** 2)
        else:
            loss = loss + torch.mean(F.relu(1.0 - dg.float()))
    return loss


def feature_matching_loss(
    real_fmaps: Sequence[Sequence[Tensor]], fake_fmaps: Sequence[Sequence[Tensor]]
) -> Tensor:
    """Feature matching ``sum_k sum_l mean(|F_kl(y) - F_kl(y_hat)|)`` over sub-discriminators and layers.

    A float32 scalar. The original HiFi-GAN multiplies this sum by 2 inside ``feature_loss``; here
    the factor is the module's ``lambda_fm`` (2.0 in the HiFi-GAN configs), so the total is the same.
    """
    if len(real_fmaps) != len(fake_fmaps):
        raise ValueError(f"{len(real_fmaps)} real vs {len(fake_fmaps)} fake sub-discriminators' feature maps")
    loss = real_fmaps[0][0].new_zeros((), dtype=torch.float32)
    for real, fake in zip(real_fmaps, fake_fmaps):
        if len(real) != len(fake):
            raise ValueError(f"{len(real)} real vs {len(fake)} fake feature maps of one sub-discriminator")
        for fr, fg in zip(real, fake):
            loss = loss + torch.mean(torch.abs(fr.float() - fg.float()))
    return loss
