"""The validation / test mel error ``val/mel_l1`` / ``test/mel_l1``: a metric and the callback that logs it.

:class:`MelL1` is a ``torchmetrics.Metric`` with two states, the summed absolute log-mel error and
the number of valid frames, both summed across processes, so the reduced value is exact for any
number of processes. The error itself is :meth:`melvoc.models.mel_loss.MelLoss.l1_sum`: the metric and the
training loss cannot drift apart. :class:`MelMetricCallback` feeds it every validation / test
batch and logs the result at the end of the epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric

from melvoc.training.callbacks.batches import repeated_last_clip, step_audio
from melvoc.features import MelConfig
from melvoc.models.mel_loss import MelLoss

__all__ = ["MelL1", "MelMetricCallback"]


class MelL1(Metric):
    """Frame-weighted mean ``|logmel(audio_hat) - logmel(audio)|`` per mel band over valid frames.

    ``update`` adds :meth:`MelLoss.l1_sum <melvoc.models.mel_loss.MelLoss.l1_sum>` of a batch to the ``sum``
    state and its valid frames to ``count``: with ``lengths`` every clip is framed as if it were
    alone, so the value does not depend on how clips are batched. Both states are float64 (long
    epochs stay exact) and reduced by sum across processes; ``compute`` returns
    ``sum / (count * num_mels)``, or ``None`` when no process saw a valid frame.

    Args:
        config: the mel parameters (``${loss_features}``): a ``MelConfig`` or a mapping.
        **kwargs: ``torchmetrics.Metric`` options (``process_group``, ``dist_sync_fn``, ...).

    Shapes:
        ``update(audio_hat (B, T') or (B, 1, T'), audio (B, T), lengths (B,) or None)``; ``T'`` may
        differ from ``T`` by less than one hop.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    sum: Tensor
    count: Tensor

    def __init__(self, config: Union[MelConfig, Mapping[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss = MelLoss(config)
        self.add_state("sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, audio_hat: Tensor, audio: Tensor, lengths: Optional[Tensor] = None) -> None:
        """Add one batch; no host reads."""
        total, frames = self.loss.l1_sum(audio_hat, audio, lengths)
        self.sum += total.to(self.sum.dtype)
        self.count += frames

    def compute(self) -> Optional[Tensor]:
        """The mean over every process's frames (a 0-dim tensor), ``None`` without valid frames."""
        if float(self.count) == 0:
            return None
        return self.sum / (self.count * self.loss.config.num_mels)


class MelMetricCallback(Callback):
    """Logs ``val/mel_l1`` and ``test/mel_l1``: :class:`MelL1` of every validation / test batch.

    On every batch the reference log-mel of ``batch[audio_key]`` and the predicted log-mel of
    ``outputs[output_key]`` are computed on the batch's device with ``config`` (the
    ``loss_features``, as :class:`melvoc.models.mel_loss.MelLoss` does), masked to each clip's valid frames
    (``batch["lengths"]``) and accumulated in device tensors: no host reads per batch. At epoch end
    the states are summed across processes and the frame-weighted mean is logged (``val/mel_l1``
    also on the progress bar). Clips that Lightning's ``DistributedSampler`` repeats to even out
    the ranks are not counted, so any number of processes gives the value of one. The sanity check
    logs nothing.

    Works with any ``LightningModule`` whose ``validation_step`` / ``test_step`` returns
    ``{"audio_hat": (B, T') or (B, 1, T')}`` for a batch ``{"audio": (B, T), "lengths": (B,), ...}``.

    Args:
        config: the mel parameters (``${loss_features}``): a ``MelConfig`` or a mapping.
        audio_key: batch key of the reference audio.
        output_key: key of the predicted audio in the step's output dict.
    """

    # Not super().__init__(): MelLossCallback joins this class and MediaCallback, each initialised
    # with its own arguments, and lightning's Callback has no __init__ of its own.
    def __init__(
        self,
        config: Union[MelConfig, Mapping[str, Any]],
        audio_key: str = "audio",
        output_key: str = "audio_hat",
    ) -> None:
        self.config = MelConfig.coerce(config)
        self.audio_key = audio_key
        self.output_key = output_key
        self.metric = MelL1(self.config)

    # Every hook passes the call on (super()), so that MelLossCallback runs both of its parents.

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)
        super().on_test_epoch_start(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update(trainer, outputs, batch, batch_idx, dataloader_idx, "val")
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(trainer, outputs, batch, batch_idx, dataloader_idx, "test")
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module, "val")
        super().on_validation_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(pl_module, "test")
        super().on_test_epoch_end(trainer, pl_module)

    def _start(self, pl_module: LightningModule) -> None:
        self.metric.reset()
        if pl_module.device.type == "mps":  # MPS has no float64
            self.metric.set_dtype(torch.float32)
        self.metric.to(pl_module.device)

    def _update(
        self, trainer: Trainer, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int, stage: str
    ) -> None:
        owner = type(self).__name__
        audio_hat, audio, lengths = step_audio(
            owner, trainer, outputs, batch, stage, self.audio_key, self.output_key
        )
        if repeated_last_clip(trainer, stage, batch_idx, dataloader_idx):
            # Every clip is framed alone, so dropping a row leaves the others' errors unchanged.
            audio_hat, audio = audio_hat[:-1], audio[:-1]
            lengths = None if lengths is None else lengths[:-1]
            if audio.shape[0] == 0:
                return
        if self.metric.device != audio.device:
            self.metric.to(audio.device)
        self.metric.update(audio_hat, audio, lengths)

    def _log(self, pl_module: LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            # A process without batches still joins the reduction; its empty update is no error.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            value = self.metric.compute()
        self.metric.reset()
        if value is None:
            warnings.warn(
                f"{type(self).__name__}: no valid frames in this {stage} epoch; "
                f"{stage}/mel_l1 not logged",
                UserWarning,
                stacklevel=2,
            )
            return
        # Every rank holds the same reduced value; sync_dist's mean leaves it unchanged and keeps
        # Lightning from asking for epoch-level syncing.
        pl_module.log(f"{stage}/mel_l1", value.float(), sync_dist=True, prog_bar=stage == "val")
