"""Lightning callbacks: the validation / test mel error, and spectrogram pictures and audio.

:class:`MelLossCallback` works with any ``LightningModule`` whose ``validation_step`` /
``test_step`` returns ``{"audio_hat": (B, T') or (B, 1, T')}`` for a batch
``{"audio": (B, T), "lengths": (B,), "names": [...]}``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torch.utils.data import DistributedSampler

from melvoc.features import MelConfig
from melvoc.loss import MelLoss

__all__ = ["MelLossCallback"]

log = logging.getLogger(__name__)

_HOOKS = {"val": "validation_step", "test": "test_step"}


@dataclass
class _Clip:
    """One validation clip for the media, on the CPU, trimmed to its valid samples and frames."""

    name: str
    audio: np.ndarray
    audio_hat: np.ndarray
    mel: np.ndarray
    mel_hat: np.ndarray


class MelLossCallback(Callback):
    """Logs ``val/mel_l1`` and ``test/mel_l1``, plus spectrogram figures and audio of a few clips.

    On every validation / test batch the reference log-mel of ``batch["audio"]`` and the predicted
    log-mel of ``outputs["audio_hat"]`` are computed on the batch's device with ``config`` (the
    ``loss_features``, as :class:`melvoc.loss.MelLoss` does). Their absolute difference is summed
    over valid frames (``batch["lengths"]`` masks the padding; each clip is framed as if it were
    alone) into device tensors: no host reads per batch. At epoch end the sums and frame counts are
    added across DDP ranks and the frame-weighted mean, per mel band, is logged. Samples that
    Lightning's ``DistributedSampler`` repeats to even out the ranks are not counted, so any
    number of processes gives the value of one.

    Media, on global rank 0 only, every ``every_n_epochs`` epochs of validation (and on every
    standalone ``trainer.validate``): for the first ``num_media`` clips, a figure with the
    reference mel, the predicted mel and their difference, and both audios. TensorBoard gets
    ``add_image`` / ``add_audio``, Weights & Biases ``log_image`` / ``log_audio``, any other logger
    (CSV) or no logger PNG and WAV files under ``<log dir>/media/epoch=NNN/``. Failures to render
    or write are warnings, never errors.

    Args:
        config: the mel parameters (``${loss_features}``): a ``MelConfig`` or a mapping.
        num_media: clips to draw and play per media epoch (0 disables media).
        every_n_epochs: media cadence during ``fit``.
        audio_key: batch key of the reference audio.
        output_key: key of the predicted audio in the step's output dict.
        cmap: matplotlib colormap of the mel panels.
    """

    def __init__(
        self,
        config: Union[MelConfig, Mapping[str, Any]],
        num_media: int = 4,
        every_n_epochs: int = 1,
        audio_key: str = "audio",
        output_key: str = "audio_hat",
        cmap: str = "magma",
    ) -> None:
        super().__init__()
        if int(num_media) < 0:
            raise ValueError(f"MelLossCallback.num_media={num_media}: must be >= 0 (0 disables media)")
        if int(every_n_epochs) < 1:
            raise ValueError(f"MelLossCallback.every_n_epochs={every_n_epochs}: must be >= 1")
        self.config = MelConfig.coerce(config)
        self.num_media = int(num_media)
        self.every_n_epochs = int(every_n_epochs)
        self.audio_key = audio_key
        self.output_key = output_key
        self.cmap = cmap
        self._loss = MelLoss(self.config)
        self._sum: Optional[Tensor] = None
        self._frames: Optional[Tensor] = None
        self._media: list[_Clip] = []
        self._collect_media = False
        self._warned_sampler = False

    # ------------------------------------------------------------------ hooks

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module, "test")

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
            self._accumulate(trainer, outputs, batch, batch_idx, dataloader_idx, "val")

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._accumulate(trainer, outputs, batch, batch_idx, dataloader_idx, "test")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    # --------------------------------------------------------------- the metric

    def _start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        device = pl_module.device
        # float64 keeps long epochs exact enough for 1-vs-N-process equality; MPS has no float64.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self._sum = torch.zeros((), device=device, dtype=dtype)
        self._frames = torch.zeros((), device=device, dtype=dtype)
        self._media = []
        fitting = trainer.state.fn == "fit"
        self._collect_media = (
            stage == "val"
            and self.num_media > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and not trainer.fast_dev_run  # a smoke test writes no logger output
            and (not fitting or (trainer.current_epoch + 1) % self.every_n_epochs == 0)
        )

    def _prediction(self, outputs: Any, hook: str) -> Tensor:
        if not isinstance(outputs, Mapping) or self.output_key not in outputs:
            got = (
                f"a dict with keys {sorted(map(str, outputs))}"
                if isinstance(outputs, Mapping)
                else type(outputs).__name__
            )
            raise ValueError(
                f"MelLossCallback: {hook} must return a dict with key "
                f"{self.output_key!r} (predicted audio, (B, T) or (B, 1, T)); it returned {got}"
            )
        audio_hat = outputs[self.output_key]
        if not isinstance(audio_hat, Tensor):
            raise ValueError(
                f"MelLossCallback: {hook} returned {self.output_key!r} of type "
                f"{type(audio_hat).__name__}; expected a tensor (B, T) or (B, 1, T)"
            )
        return audio_hat

    def _reference(self, batch: Any, hook: str) -> tuple[Tensor, Optional[Tensor]]:
        if not isinstance(batch, Mapping) or self.audio_key not in batch:
            raise ValueError(
                f"MelLossCallback: the {hook} batch must be a dict with key {self.audio_key!r} "
                f"(reference audio (B, T)) and optionally 'lengths' (B,); got {type(batch).__name__}"
            )
        return batch[self.audio_key], batch.get("lengths")

    def _accumulate(
        self,
        trainer: Trainer,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
        stage: str,
    ) -> None:
        hook = f"{type(trainer.lightning_module).__name__}.{_HOOKS[stage]}"
        audio_hat = self._prediction(outputs, hook).detach()
        audio, lengths = self._reference(batch, hook)
        if self._loss.mels.mel.mel_basis.device != audio.device:
            self._loss.to(audio.device)
        mel_hat, mel, mask = self._loss.mel_pair(audio_hat, audio, lengths)
        if mask is None:
            mask = torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.bool, device=mel.device)
        if self._last_is_duplicate(trainer, stage, batch_idx, dataloader_idx):
            mask = mask.clone()
            mask[-1] = False
        diff = (mel_hat - mel).abs()
        if self._sum is None or self._frames is None:  # a batch hook without an epoch start
            self._start(trainer, trainer.lightning_module, stage)
        self._sum = self._sum + (diff * mask.unsqueeze(1)).sum().to(self._sum)
        self._frames = self._frames + mask.sum().to(self._frames)
        if self._collect_media and dataloader_idx == 0 and len(self._media) < self.num_media:
            self._keep_media(batch, audio, audio_hat, mel, mel_hat, mask)

    def _last_is_duplicate(
        self, trainer: Trainer, stage: str, batch_idx: int, dataloader_idx: int
    ) -> bool:
        """Whether the last clip of this batch is a repeat added by a ``DistributedSampler``.

        ``DistributedSampler(drop_last=False)`` pads the index list with ``pad`` indices from its
        start so every rank gets ``ceil(N / world)`` clips; the repeats are the last clip of ranks
        ``world - pad ... world - 1``. With a plain ``BatchSampler`` that clip is the last row of
        the last batch.
        """
        if trainer.world_size == 1:
            return False
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        if isinstance(loaders, (list, tuple)):
            loader = loaders[dataloader_idx]
        elif isinstance(loaders, Mapping):
            loader = list(loaders.values())[dataloader_idx]
        else:
            loader = loaders
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
            return False
        pad = sampler.total_size - len(sampler.dataset)  # type: ignore[arg-type]
        if pad <= 0 or sampler.rank < sampler.num_replicas - pad:
            return False
        batch_sampler = getattr(loader, "batch_sampler", None)
        plain = batch_sampler is None or (
            getattr(batch_sampler, "sampler", None) is sampler
            and not getattr(batch_sampler, "drop_last", False)
        )
        if not plain:
            if not self._warned_sampler:
                self._warned_sampler = True
                warnings.warn(
                    f"MelLossCallback: {stage} loader {dataloader_idx} has a custom batch sampler "
                    f"over a padding DistributedSampler; {pad} repeated clip(s) count twice in "
                    f"{stage}/mel_l1 (use a dataset size divisible by the world size)",
                    UserWarning,
                    stacklevel=2,
                )
            return False
        num_batches = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
        total = num_batches[dataloader_idx]
        return total == len(loader) and batch_idx == total - 1

    def _finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._sum is None or self._frames is None:
            return
        total = trainer.strategy.reduce(self._sum, reduce_op="sum")
        frames = trainer.strategy.reduce(self._frames, reduce_op="sum")
        if float(frames) > 0:
            value = total / (frames * self.config.num_mels)
            # Every rank holds the same reduced value; sync_dist's mean leaves it unchanged and
            # keeps Lightning from asking for epoch-level syncing.
            pl_module.log(f"{stage}/mel_l1", value.float(), sync_dist=True, prog_bar=stage == "val")
        else:
            warnings.warn(
                f"MelLossCallback: no valid frames in this {stage} epoch; {stage}/mel_l1 not logged",
                UserWarning,
                stacklevel=2,
            )
        self._sum = self._frames = None
        if self._media:
            try:
                self._log_media(trainer, stage)
            except Exception as error:  # media must never stop a training run
                warnings.warn(
                    f"MelLossCallback: could not log media for epoch {trainer.current_epoch}: "
                    f"{error!r}; training continues",
                    UserWarning,
                    stacklevel=2,
                )
            self._media = []

    # ------------------------------------------------------------------- media

    def _keep_media(
        self,
        batch: Mapping[str, Any],
        audio: Tensor,
        audio_hat: Tensor,
        mel: Tensor,
        mel_hat: Tensor,
        mask: Tensor,
    ) -> None:
        audio = audio.reshape(audio.shape[0], -1)
        audio_hat = audio_hat.reshape(audio_hat.shape[0], -1)
        take = min(self.num_media - len(self._media), audio.shape[0])
        samples = min(audio.shape[-1], audio_hat.shape[-1])
        lengths = batch.get("lengths")
        valid = (
            [samples] * take
            if lengths is None
            else torch.as_tensor(lengths)[:take].clamp(max=samples).tolist()
        )
        frames = mask[:take].sum(1).tolist()
        names = batch.get("names") or [None] * take
        for row in range(take):
            name = names[row] if row < len(names) and names[row] else f"clip{len(self._media)}"
            self._media.append(
                _Clip(
                    name=str(name),
                    audio=audio[row, : valid[row]].float().cpu().numpy(),
                    audio_hat=audio_hat[row, : valid[row]].float().cpu().numpy(),
                    mel=mel[row, :, : frames[row]].float().cpu().numpy(),
                    mel_hat=mel_hat[row, :, : frames[row]].float().cpu().numpy(),
                )
            )

    def _log_media(self, trainer: Trainer, stage: str) -> None:
        step = trainer.global_step
        epoch = trainer.current_epoch
        sr = self.config.sampling_rate
        images = [_render(clip, self.cmap) for clip in self._media]
        tags = [f"{index:02d}_{_safe(clip.name)}" for index, clip in enumerate(self._media)]
        file_dirs: list[Path] = []
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                for tag, clip, image in zip(tags, self._media, images):
                    writer.add_image(f"{stage}_media/{tag}/mel", image, step, dataformats="HWC")
                    for kind, wave in (("reference", clip.audio), ("predicted", clip.audio_hat)):
                        writer.add_audio(
                            f"{stage}_media/{tag}/{kind}",
                            torch.from_numpy(np.clip(wave, -1.0, 1.0)).unsqueeze(0),
                            step,
                            sample_rate=sr,
                        )
            elif isinstance(logger, WandbLogger):
                captions = [clip.name for clip in self._media]
                logger.log_image(f"{stage}_media/mel", images=images, step=step, caption=captions)
                for kind, attribute in (("reference", "audio"), ("predicted", "audio_hat")):
                    logger.log_audio(
                        f"{stage}_media/{kind}",
                        audios=[np.clip(getattr(clip, attribute), -1.0, 1.0) for clip in self._media],
                        step=step,
                        sample_rate=[sr] * len(self._media),
                        caption=captions,
                    )
            else:
                root = getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir
                file_dirs.append(Path(root))
        if not trainer.loggers:
            file_dirs.append(Path(trainer.default_root_dir))
        for root in dict.fromkeys(file_dirs):
            _write_files(root / "media" / f"epoch={epoch:03d}", tags, self._media, images, sr)


def _safe(name: str) -> str:
    """A file- and tag-safe version of a clip name (paths keep their last components)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-80:] or "clip"


def _render(clip: _Clip, cmap: str) -> np.ndarray:
    """Reference mel, predicted mel and their difference as an ``(H, W, 3)`` uint8 RGB image."""
    # The object-oriented API with the Agg canvas: no pyplot state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7.5), dpi=72, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(3, 1, sharex=True)
    low, high = float(clip.mel.min(initial=0.0)), float(clip.mel.max(initial=0.0))
    diff = clip.mel_hat - clip.mel
    limit = max(float(np.abs(diff).max(initial=0.0)), 1e-6)
    panels = (
        (clip.mel, "reference log-mel", cmap, low, high),
        (clip.mel_hat, "predicted log-mel", cmap, low, high),
        (diff, f"predicted - reference (mean |diff| {np.abs(diff).mean() if diff.size else 0:.4f})",
         "coolwarm", -limit, limit),
    )
    for ax, (data, title, colors, vmin, vmax) in zip(axes, panels):
        shown = ax.imshow(
            data, origin="lower", aspect="auto", interpolation="none", cmap=colors, vmin=vmin, vmax=vmax
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mel band")
        figure.colorbar(shown, ax=ax)
    axes[-1].set_xlabel("frame")
    figure.suptitle(clip.name, fontsize=11)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _write_files(
    folder: Path, tags: list[str], clips: list[_Clip], images: list[np.ndarray], sampling_rate: int
) -> None:
    import matplotlib.image
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    for tag, clip, image in zip(tags, clips, images):
        matplotlib.image.imsave(folder / f"{tag}_mel.png", image)
        for kind, wave in (("reference", clip.audio), ("predicted", clip.audio_hat)):
            soundfile.write(
                folder / f"{tag}_{kind}.wav", np.clip(wave, -1.0, 1.0), sampling_rate, subtype="PCM_16"
            )
    log.debug("MelLossCallback: wrote %d clip(s) of media to %s", len(clips), folder)
