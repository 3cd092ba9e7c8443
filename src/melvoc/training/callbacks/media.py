"""Spectrogram pictures and audio of a few validation clips, sent to whatever logger is attached."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from melvoc.training.callbacks.batches import step_audio
from melvoc.features import MelConfig
from melvoc.models.mel_loss import MelLoss

__all__ = ["MediaCallback"]

log = logging.getLogger(__name__)


@dataclass
class _Clip:
    """One validation clip for the media, on the CPU, trimmed to its valid samples and frames."""

    name: str
    audio: np.ndarray
    audio_hat: np.ndarray
    mel: np.ndarray
    mel_hat: np.ndarray


class MediaCallback(Callback):
    """Spectrogram figures and audio of the first ``num_media`` validation clips.

    On global rank 0 only, every ``every_n_epochs`` epochs of validation during ``fit`` (and on
    every standalone ``trainer.validate``; never in the sanity check, ``fast_dev_run`` or ``test``):
    for each clip a figure with the reference log-mel, the predicted log-mel and their difference,
    and both audios, trimmed to the clip's valid samples and frames (``batch["lengths"]``). The mels
    are :meth:`melvoc.models.mel_loss.MelLoss.mel_pair` with ``config``, the mels that ``val/mel_l1`` compares.
    TensorBoard gets ``add_image`` / ``add_audio`` under ``val_media/<NN>_<clip>/``, Weights & Biases
    ``log_image`` / ``log_audio`` under ``val_media/``, any other logger (CSV) or no logger PNG and
    WAV files under ``<log dir>/media/epoch=NNN/``. Failures to render or write are warnings, never
    errors.

    Args:
        config: the mel parameters (``${loss_features}``): a ``MelConfig`` or a mapping.
        num_media: clips to draw and play per media epoch (0 disables media).
        every_n_epochs: media cadence during ``fit``.
        audio_key: batch key of the reference audio.
        output_key: key of the predicted audio in the step's output dict.
        cmap: matplotlib colormap of the mel panels.
    """

    # Not super().__init__(): see MelMetricCallback.__init__.
    def __init__(
        self,
        config: Union[MelConfig, Mapping[str, Any]],
        num_media: int = 4,
        every_n_epochs: int = 1,
        audio_key: str = "audio",
        output_key: str = "audio_hat",
        cmap: str = "magma",
    ) -> None:
        owner = type(self).__name__
        if int(num_media) < 0:
            raise ValueError(f"{owner}.num_media={num_media}: must be >= 0 (0 disables media)")
        if int(every_n_epochs) < 1:
            raise ValueError(f"{owner}.every_n_epochs={every_n_epochs}: must be >= 1")
        self.config = MelConfig.coerce(config)
        self.num_media = int(num_media)
        self.every_n_epochs = int(every_n_epochs)
        self.audio_key = audio_key
        self.output_key = output_key
        self.cmap = cmap
        self._mels = MelLoss(self.config)
        self._clips: list[_Clip] = []
        self._collect = False
        #: Where media went so far, one human-readable line per destination (the run summary prints them).
        self.written_to: dict[str, str] = {}

    # Every hook passes the call on (super()), so that MelLossCallback runs both of its parents.

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clips = []
        self._collect = (
            self.num_media > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and not trainer.fast_dev_run  # a smoke test writes no logger output
            and (trainer.state.fn != "fit" or (trainer.current_epoch + 1) % self.every_n_epochs == 0)
        )
        super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._collect and dataloader_idx == 0 and len(self._clips) < self.num_media:
            self._keep(trainer, outputs, batch)
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._clips:
            try:
                self._log_media(trainer)
            except Exception as error:  # media must never stop a training run
                warnings.warn(
                    f"{type(self).__name__}: could not log media for epoch {trainer.current_epoch}: "
                    f"{error!r}; training continues",
                    UserWarning,
                    stacklevel=2,
                )
            self._clips = []
        super().on_validation_epoch_end(trainer, pl_module)

    def _keep(self, trainer: Trainer, outputs: Any, batch: Mapping[str, Any]) -> None:
        audio_hat, audio, lengths = step_audio(
            type(self).__name__, trainer, outputs, batch, "val", self.audio_key, self.output_key
        )
        take = min(self.num_media - len(self._clips), audio.shape[0])
        lengths = None if lengths is None else torch.as_tensor(lengths)[:take]
        self._mels.to(audio.device)
        mel_hat, mel, mask = self._mels.mel_pair(audio_hat[:take], audio[:take], lengths)
        # mel_pair crops both audios to the shorter; the waves follow it.
        samples = min(audio.shape[-1], audio_hat.shape[-1])
        audio = audio[:take].reshape(take, -1)
        audio_hat = audio_hat[:take].reshape(take, -1)
        valid = [samples] * take if lengths is None else lengths.clamp(max=samples).tolist()
        frames = [mel.shape[-1]] * take if mask is None else mask.sum(1).tolist()
        names = batch.get("names") or []
        for row in range(take):
            name = names[row] if row < len(names) and names[row] else f"clip{len(self._clips)}"
            self._clips.append(
                _Clip(
                    name=str(name),
                    audio=audio[row, : valid[row]].float().cpu().numpy(),
                    audio_hat=audio_hat[row, : valid[row]].float().cpu().numpy(),
                    mel=mel[row, :, : frames[row]].float().cpu().numpy(),
                    mel_hat=mel_hat[row, :, : frames[row]].float().cpu().numpy(),
                )
            )

    def _log_media(self, trainer: Trainer) -> None:
        step = trainer.global_step
        sr = self.config.sampling_rate
        images = [_render(clip, self.cmap) for clip in self._clips]
        tags = [f"{index:02d}_{_safe(clip.name)}" for index, clip in enumerate(self._clips)]
        file_dirs: list[Path] = []
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                self.written_to["tensorboard"] = f"TensorBoard, tab IMAGES/AUDIO, val_media/: {logger.log_dir}"
                writer = logger.experiment
                for tag, clip, image in zip(tags, self._clips, images):
                    writer.add_image(f"val_media/{tag}/mel", image, step, dataformats="HWC")
                    for kind, wave in (("reference", clip.audio), ("predicted", clip.audio_hat)):
                        writer.add_audio(
                            f"val_media/{tag}/{kind}",
                            torch.from_numpy(np.clip(wave, -1.0, 1.0)).unsqueeze(0),
                            step,
                            sample_rate=sr,
                        )
            elif isinstance(logger, WandbLogger):
                self.written_to["wandb"] = f"Weights & Biases run {logger.name}/{logger.version}, val_media/"
                captions = [clip.name for clip in self._clips]
                logger.log_image("val_media/mel", images=images, step=step, caption=captions)
                for kind, attribute in (("reference", "audio"), ("predicted", "audio_hat")):
                    logger.log_audio(
                        f"val_media/{kind}",
                        audios=[np.clip(getattr(clip, attribute), -1.0, 1.0) for clip in self._clips],
                        step=step,
                        sample_rate=[sr] * len(self._clips),
                        caption=captions,
                    )
            else:
                root = getattr(logger, "log_dir", None) or logger.save_dir or trainer.default_root_dir
                file_dirs.append(Path(root))
        if not trainer.loggers:
            file_dirs.append(Path(trainer.default_root_dir))
        for root in dict.fromkeys(file_dirs):
            folder = root / "media" / f"epoch={trainer.current_epoch:03d}"
            _write_files(folder, tags, self._clips, images, sr)
            self.written_to[str(root)] = f"PNG + WAV files: {root / 'media'}/epoch=NNN/"
            log.debug("%s: wrote %d clip(s) of media to %s", type(self).__name__, len(tags), folder)


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
    """``<tag>_mel.png``, ``<tag>_reference.wav`` and ``<tag>_predicted.wav`` (16-bit PCM) per clip."""
    import matplotlib.image
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    for tag, clip, image in zip(tags, clips, images):
        matplotlib.image.imsave(folder / f"{tag}_mel.png", image)
        for kind, wave in (("reference", clip.audio), ("predicted", clip.audio_hat)):
            soundfile.write(
                folder / f"{tag}_{kind}.wav", np.clip(wave, -1.0, 1.0), sampling_rate, subtype="PCM_16"
            )
