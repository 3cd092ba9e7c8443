"""Learning-rate schedules that ``torch.optim.lr_scheduler`` lacks, as ``_partial_`` factories for YAML.

``scheduler_g: {_target_: melvoc.models.schedulers.cosine_schedule_with_warmup, _partial_: true, ...}``;
:class:`~melvoc.models.GANVocoder` calls the factory with ``optimizer=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["cosine_schedule_with_warmup"]


@dataclass(frozen=True)
class _CosineWithWarmup:
    """Learning-rate factor of :func:`cosine_schedule_with_warmup` (a class, so it pickles)."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return step / max(1, self.num_warmup_steps)
        progress = (step - self.num_warmup_steps) / max(1, self.num_training_steps - self.num_warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * progress)))


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 0.5
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then cosine decay to 0 at ``num_training_steps``: Vocos' scheduler.

    The formula of ``transformers.get_cosine_schedule_with_warmup``, which Vocos' ``VocosExp`` steps
    once per optimizer step with ``num_training_steps`` = its ``max_steps // 2`` (the updates of one network).
    Use it from YAML as ``{_target_: melvoc.models.schedulers.cosine_schedule_with_warmup, _partial_: true, ...}``.
    """
    if num_warmup_steps < 0 or num_training_steps < 1:
        raise ValueError(
            f"cosine_schedule_with_warmup num_warmup_steps={num_warmup_steps}, num_training_steps="
            f"{num_training_steps}: need num_warmup_steps >= 0 and num_training_steps >= 1"
        )
    factor = _CosineWithWarmup(int(num_warmup_steps), int(num_training_steps), float(num_cycles))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
