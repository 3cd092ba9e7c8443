"""What a validation / test step hands the callbacks, read the same way by every callback.

A batch is ``{"audio": (B, T), "lengths": (B,), "names": [...], ...}`` and the step returns
``{"audio_hat": (B, T') or (B, 1, T')}``. :func:`step_audio` reads both with errors that name the
hook and the missing key; :func:`repeated_last_clip` tells a metric which clip a
``DistributedSampler`` repeated, so that it can leave it out and any number of processes gives
the value of one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional

from lightning.pytorch import Trainer
from torch import Tensor
from torch.utils.data import DistributedSampler

__all__ = ["repeated_last_clip", "stage_loader", "step_audio"]

_HOOKS = {"val": "validation_step", "test": "test_step"}


def step_audio(
    owner: str,
    trainer: Trainer,
    outputs: Any,
    batch: Any,
    stage: str,
    audio_key: str = "audio",
    output_key: str = "audio_hat",
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(audio_hat, audio, lengths)`` of one ``stage`` (``"val"`` | ``"test"``) step.

    ``audio_hat`` (detached) is ``(B, T')`` or ``(B, 1, T')``, ``audio`` ``(B, T)``, ``lengths``
    ``(B,)`` or ``None`` when the batch has none. ``owner`` (the callback's name) starts the errors.

    Raises:
        ValueError: the step did not return a dict with a tensor under ``output_key``, or the batch
            is not a dict with ``audio_key``.
    """
    hook = f"{type(trainer.lightning_module).__name__}.{_HOOKS[stage]}"
    if not isinstance(outputs, Mapping) or output_key not in outputs:
        got = (
            f"a dict with keys {sorted(map(str, outputs))}"
            if isinstance(outputs, Mapping)
            else type(outputs).__name__
        )
        raise ValueError(
            f"{owner}: {hook} must return a dict with key {output_key!r} "
            f"(predicted audio, (B, T) or (B, 1, T)); it returned {got}"
        )
    audio_hat = outputs[output_key]
    if not isinstance(audio_hat, Tensor):
        raise ValueError(
            f"{owner}: {hook} returned {output_key!r} of type {type(audio_hat).__name__}; "
            "expected a tensor (B, T) or (B, 1, T)"
        )
    if not isinstance(batch, Mapping) or audio_key not in batch:
        raise ValueError(
            f"{owner}: the {hook} batch must be a dict with key {audio_key!r} (reference audio "
            f"(B, T)) and optionally 'lengths' (B,); got {type(batch).__name__}"
        )
    return audio_hat.detach(), batch[audio_key], batch.get("lengths")


def stage_loader(trainer: Trainer, stage: str, dataloader_idx: int) -> Any:
    """The ``dataloader_idx``-th validation (``stage="val"``) or test loader of ``trainer``."""
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        return loaders[dataloader_idx]
    if isinstance(loaders, Mapping):
        return list(loaders.values())[dataloader_idx]
    return loaders


def repeated_last_clip(trainer: Trainer, stage: str, batch_idx: int, dataloader_idx: int) -> bool:
    """Whether the last clip of this batch is a repeat added by a ``DistributedSampler``.

    ``DistributedSampler(drop_last=False)`` pads the index list with ``pad`` indices from its start
    so every rank gets ``ceil(N / world)`` clips; the repeats are the last clip of ranks
    ``world - pad ... world - 1``. With a plain ``BatchSampler`` that clip is the last row of the
    last batch. Under a custom batch sampler the repeat cannot be located: this warns (on that
    last batch) and returns ``False``. Decided from the host-side loader state: no device reads.
    """
    if trainer.world_size == 1:
        return False
    loader = stage_loader(trainer, stage, dataloader_idx)
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return False
    pad = sampler.total_size - len(sampler.dataset)  # type: ignore[arg-type]
    if pad <= 0 or sampler.rank < sampler.num_replicas - pad:
        return False
    num_batches = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
    total = num_batches[dataloader_idx]
    if total != len(loader) or batch_idx != total - 1:
        return False
    batch_sampler = getattr(loader, "batch_sampler", None)
    plain = batch_sampler is None or (
        getattr(batch_sampler, "sampler", None) is sampler
        and not getattr(batch_sampler, "drop_last", False)
    )
    if not plain:
        warnings.warn(
            f"{stage} loader {dataloader_idx} has a custom batch sampler over a padding "
            f"DistributedSampler; {pad} repeated clip(s) count twice in {stage} metrics "
            "(use a dataset size divisible by the world size)",
            UserWarning,
            stacklevel=3,
        )
    return plain
