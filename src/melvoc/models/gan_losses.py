"""HiFi-GAN adversarial losses: least-squares GAN (LSGAN) and feature matching.

All losses are computed in float32 whatever the discriminator's output dtype (bf16/fp16 under
autocast), so that squared logits and sums over ~50 feature maps cannot overflow or lose precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["discriminator_loss", "feature_matching_loss", "generator_loss"]


def discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """LSGAN discriminator loss ``sum_k mean((1 - D_k(y))^2) + mean(D_k(y_hat)^2)`` (a float32 scalar)."""
    if len(real_logits) != len(fake_logits):
        raise ValueError(f"{len(real_logits)} real vs {len(fake_logits)} fake discriminator outputs")
    loss = real_logits[0].new_zeros((), dtype=torch.float32)
    for dr, dg in zip(real_logits, fake_logits):
        loss = loss + torch.mean((1.0 - dr.float()) ** 2) + torch.mean(dg.float() ** 2)
    return loss


def generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """LSGAN generator (adversarial) loss ``sum_k mean((1 - D_k(y_hat))^2)`` (a float32 scalar)."""
    loss = fake_logits[0].new_zeros((), dtype=torch.float32)
    for dg in fake_logits:
        loss = loss + torch.mean((1.0 - dg.float()) ** 2)
    return loss


def feature_matching_loss(real_fmaps: Sequence[Tensor], fake_fmaps: Sequence[Tensor]) -> Tensor:
    """Feature matching ``sum_l mean(|F_l(y) - F_l(y_hat)|)`` over all feature maps (a float32 scalar).

    The original HiFi-GAN multiplies this sum by 2 inside ``feature_loss``; here the factor is the
    module's ``lambda_fm`` (default 2.0), so the total is the same.
    """
    if len(real_fmaps) != len(fake_fmaps):
        raise ValueError(f"{len(real_fmaps)} real vs {len(fake_fmaps)} fake feature maps")
    loss = real_fmaps[0].new_zeros((), dtype=torch.float32)
    for fr, fg in zip(real_fmaps, fake_fmaps):
        loss = loss + torch.mean(torch.abs(fr.float() - fg.float()))
    return loss
