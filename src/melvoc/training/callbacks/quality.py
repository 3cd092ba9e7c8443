"""Validation quality metrics (PESQ, M-STFT, MCD, periodicity, V/UV F1) as a Lightning callback."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import BatchSampler, DistributedSampler

from melvoc.training.callbacks.batches import stage_loader
from melvoc.metrics import CREPE_MODELS, DEFAULT_METRICS, PITCH_METRICS, parse_metrics, score

__all__ = ["QualityMetricsCallback"]


class QualityMetricsCallback(Callback):
    """Logs ``val/pesq``, ``val/mstft``, ``val/mcd``, ``val/periodicity``, ``val/vuv_f1`` (and
    ``val/f0_rmse`` on request): the mean over validation clips of :func:`melvoc.metrics.score`.

    Works with any ``LightningModule`` whose ``validation_step`` returns ``{"audio_hat": (B, T) or
    (B, 1, T)}`` for a batch ``{"audio": (B, T), "lengths": (B,), "names": [...]}``. Each clip is
    trimmed to its ``lengths`` entry (and to the prediction's length), moved to the CPU and scored
    alone; CREPE runs on the module's device. Per metric, a float64 sum and a clip count are kept
    on the module's device and added across DDP ranks at epoch end, so each rank scores only its own
    clips and any number of processes logs the value of one (up to float64 summation order). Clips
    that Lightning's ``DistributedSampler`` repeats to even out the ranks are not counted.

    Scoring costs seconds per clip on a CPU (see the README), so it runs on every
    ``every_n_validations``-th validation of ``fit`` (the 1st, N+1-th, ...: the first validation
    gives a baseline) and on every standalone ``trainer.validate``, never in the sanity check, and
    only on a subset of clips.

    Args:
        sampling_rate: rate of the audio in Hz (``${features.sampling_rate}``).
        metrics: names from :data:`melvoc.metrics.ALL_METRICS`, a list or ``"pesq,mcd"``.
        every_n_validations: cadence during ``fit``.
        clips: which validation clips: ``None`` all; an int ``N`` the first ``N`` of the
            validation set (by dataset index, the same clips on any number of ranks); a list of
            names (``batch["names"]`` entries).
        pitch_model: CREPE capacity for the pitch metrics, ``tiny`` (cheap) or ``full`` (the
            CARGAN/BigVGAN protocol; about 15x the CPU time).
        audio_key: batch key of the reference audio.
        output_key: key of the predicted audio in the step's output dict.
    """

    def __init__(
        self,
        sampling_rate: int,
        metrics: Union[str, Sequence[str]] = DEFAULT_METRICS,
        every_n_validations: int = 1,
        clips: Union[None, int, Sequence[str]] = None,
        pitch_model: str = "tiny",
        audio_key: str = "audio",
        output_key: str = "audio_hat",
    ) -> None:
        super().__init__()
        if int(sampling_rate) <= 0:
            raise ValueError(f"QualityMetricsCallback.sampling_rate={sampling_rate}: must be a positive rate in Hz")
        if int(every_n_validations) < 1:
            raise ValueError(f"QualityMetricsCallback.every_n_validations={every_n_validations}: must be >= 1")
        if isinstance(clips, bool) or (isinstance(clips, int) and clips < 1):
            raise ValueError(
                f"QualityMetricsCallback.clips={clips!r}: use null (all clips), a count >= 1 or a list of names"
            )
        if pitch_model not in CREPE_MODELS:
            raise ValueError(f"QualityMetricsCallback.pitch_model={pitch_model!r}: must be one of {', '.join(CREPE_MODELS)}")
        self.sampling_rate = int(sampling_rate)
        self.metrics = parse_metrics(metrics)
        self.every_n_validations = int(every_n_validations)
        self.clips: Union[None, int, frozenset[str]] = (
            clips if clips is None or isinstance(clips, int) else frozenset(map(str, clips))
        )
        self.pitch_model = pitch_model
        self.audio_key = audio_key
        self.output_key = output_key
        self._validations = 0
        self._active = False
        self._sums: Optional[Tensor] = None
        self._counts: Optional[Tensor] = None
        self._failures: list[str] = []
        self._order: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ hooks

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = False
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting:
            self._validations += 1
        self._active = not fitting or (self._validations - 1) % self.every_n_validations == 0
        if self._active:
            shape = (len(self.metrics),)
            self._sums = torch.zeros(shape, dtype=torch.float64, device=pl_module.device)
            self._counts = torch.zeros(shape, dtype=torch.float64, device=pl_module.device)
            self._failures = []
            self._order = {}

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or self._sums is None or self._counts is None:
            return
        hook = f"{type(pl_module).__name__}.validation_step"
        audio, lengths, names = self._reference(batch, hook)
        audio_hat = self._prediction(outputs, hook)
        audio = audio.reshape(audio.shape[0], -1)
        audio_hat = audio_hat.detach().reshape(audio_hat.shape[0], -1)
        rows = self._select(trainer, batch_idx, dataloader_idx, audio.shape[0], names)
        if not rows:
            return
        samples = min(audio.shape[-1], audio_hat.shape[-1])
        valid = [samples] * audio.shape[0] if lengths is None else torch.as_tensor(lengths).clamp(max=samples).tolist()
        sums = [0.0] * len(self.metrics)
        counts = [0] * len(self.metrics)
        for row in rows:
            reference = audio[row, : valid[row]].float().cpu().numpy()
            predicted = audio_hat[row, : valid[row]].float().cpu().numpy()
            values = self._score_clip(reference, predicted, names[row], pl_module.device)
            for index, name in enumerate(self.metrics):
                value = values.get(name)
                if value is not None and value == value:  # NaN (f0_rmse without voiced frames) is left out
                    sums[index] += value
                    counts[index] += 1
        self._sums += torch.tensor(sums, dtype=torch.float64, device=self._sums.device)
        self._counts += torch.tensor(counts, dtype=torch.float64, device=self._counts.device)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active or self._sums is None or self._counts is None:
            return
        sums = trainer.strategy.reduce(self._sums, reduce_op="sum")
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum")
        if self._failures:
            warnings.warn(
                "QualityMetricsCallback: left out of the means: " + "; ".join(self._failures),
                UserWarning,
                stacklevel=2,
            )
        missing = [name for name, count in zip(self.metrics, counts.tolist()) if count == 0]
        for index, name in enumerate(self.metrics):
            if name not in missing:
                # Every rank holds the same reduced value; sync_dist's mean leaves it unchanged.
                pl_module.log(f"val/{name}", (sums[index] / counts[index]).float(), sync_dist=True)
        if missing:
            warnings.warn(
                f"QualityMetricsCallback: no clip could be scored for {', '.join(missing)} in this "
                "validation; nothing logged for them (check `clips` and the warnings above)",
                UserWarning,
                stacklevel=2,
            )
        self._sums = self._counts = None
        self._active = False

    # ------------------------------------------------------------------ parts

    def _score_clip(self, reference, predicted, name: str, device: torch.device) -> dict[str, float]:
        values: dict[str, float] = {}
        pitched = [m for m in self.metrics if m in PITCH_METRICS]
        groups = [(m,) for m in self.metrics if m not in PITCH_METRICS] + ([tuple(pitched)] if pitched else [])
        for group in groups:
            try:
                values.update(score(reference, predicted, self.sampling_rate, group,
                                    pitch_model=self.pitch_model, device=device))
            except ValueError as error:  # e.g. PESQ of a silent prediction early in training
                self._failures.append(f"{name} ({', '.join(group)}): {error}")
        return values

    def _reference(self, batch: Any, hook: str) -> tuple[Tensor, Optional[Tensor], list[str]]:
        if not isinstance(batch, Mapping) or self.audio_key not in batch:
            raise ValueError(
                f"QualityMetricsCallback: the validation batch of {hook} must be a dict with key "
                f"{self.audio_key!r} (reference audio (B, T)); got {type(batch).__name__}"
            )
        audio = batch[self.audio_key]
        names = list(batch.get("names") or [])
        names += [f"clip{i}" for i in range(len(names), audio.shape[0])]
        return audio, batch.get("lengths"), [str(n) for n in names]

    def _prediction(self, outputs: Any, hook: str) -> Tensor:
        if not isinstance(outputs, Mapping) or not isinstance(outputs.get(self.output_key), Tensor):
            got = f"a dict with keys {sorted(map(str, outputs))}" if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"QualityMetricsCallback: {hook} must return a dict with tensor {self.output_key!r} "
                f"(predicted audio, (B, T) or (B, 1, T)); it returned {got}"
            )
        return outputs[self.output_key]

    def _select(self, trainer: Trainer, batch_idx: int, dataloader_idx: int, rows: int,
                names: list[str]) -> list[int]:
        """Rows of this batch to score: in the clip subset and not a DistributedSampler repeat."""
        positions = self._dataset_positions(trainer, batch_idx, dataloader_idx, rows)
        chosen = []
        for row in range(rows):
            index, repeat = positions[row] if positions is not None else (None, False)
            if repeat:
                continue
            if isinstance(self.clips, int):
                if index is None:
                    raise ValueError(
                        "QualityMetricsCallback: clips is a count, but the validation loader's "
                        "batches cannot be mapped to dataset indices (custom batch sampler); give "
                        "`clips` as a list of names or null"
                    )
                if index >= self.clips:
                    continue
            elif isinstance(self.clips, frozenset) and names[row] not in self.clips:
                continue
            chosen.append(row)
        return chosen

    def _dataset_positions(self, trainer: Trainer, batch_idx: int, dataloader_idx: int,
                           rows: int) -> Optional[list[tuple[int, bool]]]:
        """``(dataset index, is a DistributedSampler repeat)`` per row, or None when unknown.

        With a plain ``BatchSampler`` row ``j`` of batch ``b`` is element ``b * batch_size + j`` of
        the sampler's order. ``DistributedSampler`` deals the padded index list round robin, so
        element ``k`` of rank ``r`` sits at ``r + k * world`` of it; past ``len(dataset)`` it is a
        repeat of a clip another rank scores.
        """
        loader = stage_loader(trainer, "val", dataloader_idx)
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(loader, "sampler", None)
        if (
            not isinstance(batch_sampler, BatchSampler)
            or batch_sampler.sampler is not sampler
            or sampler is None
        ):
            return None
        if dataloader_idx not in self._order:
            self._order[dataloader_idx] = list(iter(sampler))
        order = self._order[dataloader_idx]
        start = batch_idx * batch_sampler.batch_size
        if start + rows > len(order):
            return None
        out = []
        for k in range(start, start + rows):
            repeat = False
            if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
                repeat = sampler.rank + k * sampler.num_replicas >= len(sampler.dataset)  # type: ignore[arg-type]
            out.append((int(order[k]), repeat))
        return out
