"""The HiFi-GAN ``LightningModule``: generator + MPD/MSD trained adversarially with manual optimization.

One training step (the order of the original ``train.py``)::

    mel (B, num_mels, F) --generator--> audio_hat (B, F * hop)
    discriminator step:  LSGAN(D(audio), D(audio_hat.detach()))
    generator step:      LSGAN_g(D(audio_hat)) + lambda_fm * FM + lambda_mel * MelLoss(audio_hat, audio)

Step counting. With two optimizers under manual optimization Lightning counts *every*
``optimizer.step()`` in ``trainer.global_step`` (Lightning-AI/pytorch-lightning#17958), so
``max_steps=N`` would stop after N/2 batches and checkpoints every ``k`` steps would come every
``k/2`` batches. Here only the generator step is counted: the discriminator optimizer is stepped
with its progress hooks (``LightningOptimizer._on_before_step`` / ``_on_after_step``, which the
manual-optimization loop installs per batch) temporarily replaced by no-ops. The step still goes
through the strategy and precision plugin (AMP scaler, DDP), only the counter is skipped; so
``global_step`` == generator updates == batches, and logged steps count batches.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from melvoc.features import MelConfig, MelSpectrogram
from melvoc.models.discriminators import MPD_CHANNELS, MSD_CHANNELS, CombinedDiscriminator
from melvoc.models.gan_losses import discriminator_loss, feature_matching_loss, generator_loss
from melvoc.models.generator import Generator, check_upsampling

__all__ = ["HiFiGAN"]


DEFAULT_GENERATOR: dict[str, Any] = {  # HiFi-GAN V1
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "upsample_initial_channel": 512,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
}
DEFAULT_DISCRIMINATOR: dict[str, Any] = {
    "mpd": {"periods": [2, 3, 5, 7, 11], "channels": list(MPD_CHANNELS)},
    "msd": {"scales": 3, "channels": list(MSD_CHANNELS)},
}
DEFAULT_OPTIMIZER: dict[str, Any] = {"lr": 2e-4, "betas": [0.8, 0.99], "eps": 1e-8, "weight_decay": 0.01}


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig/MelConfig/tuples -> plain dicts and lists (for hparams and checkpoints)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, MelConfig):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if k != "_target_"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _noop() -> None:
    return None


@contextlib.contextmanager
def _uncounted(optimizer: LightningOptimizer) -> Iterator[None]:
    """Step ``optimizer`` without advancing ``trainer.global_step`` (see the module docstring)."""
    before, after = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = _noop
    try:
        yield
    finally:
        optimizer._on_before_step, optimizer._on_after_step = before, after


def _match_lengths(audio: Tensor, audio_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Trim ``(B, T)`` and ``(B, T')`` to their common length (``center=True`` gives one extra frame)."""
    n = min(audio.size(-1), audio_hat.size(-1))
    return audio[..., :n], audio_hat[..., :n]


class HiFiGAN(L.LightningModule):
    """HiFi-GAN vocoder with manual GAN optimization.

    Args:
        features: the mel features the generator consumes (``MelConfig`` or mapping); its
            ``hop_size`` must equal the generator's total upsampling, ``num_mels`` its input channels.
        loss_features: the mel features of the reconstruction loss (HiFi-GAN: ``features`` with
            ``fmax`` null); defaults to ``features``.
        generator: :class:`~melvoc.models.generator.Generator` arguments (``num_mels`` comes from
            ``features``); defaults to HiFi-GAN V1.
        discriminator: ``{"mpd": {"periods", "channels"} | None, "msd": {"scales", "channels"} | None}``.
        optimizer: AdamW arguments for both networks (``lr``, ``betas``, ``eps``, ``weight_decay``).
        lr_decay: ``ExponentialLR`` gamma, stepped once per epoch (HiFi-GAN: 0.999).
        lambda_mel: weight of the mel L1 loss (45).
        lambda_fm: weight of the feature-matching sum (2; the original's ``2 * feature_loss``).
        lambda_adv: weight of the generator's adversarial loss (1).
        mel_loss: ``"mel"`` (:class:`melvoc.loss.MelLoss` on ``loss_features``) or ``"multiscale"``
            (:class:`melvoc.loss.MultiScaleMelLoss` at ``loss_features.sampling_rate``).
        mel_loss_kwargs: extra arguments of ``MultiScaleMelLoss``.
        grad_clip: clip each network's gradient norm to this value (``None``: no clipping).
    """

    def __init__(
        self,
        features: MelConfig | Mapping[str, Any],
        loss_features: MelConfig | Mapping[str, Any] | None = None,
        generator: Mapping[str, Any] | None = None,
        discriminator: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        lr_decay: float = 0.999,
        lambda_mel: float = 45.0,
        lambda_fm: float = 2.0,
        lambda_adv: float = 1.0,
        mel_loss: Literal["mel", "multiscale"] = "mel",
        mel_loss_kwargs: Mapping[str, Any] | None = None,
        grad_clip: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False

        features = MelConfig.coerce(features)
        loss_features = MelConfig.coerce(loss_features) if loss_features is not None else features
        generator_cfg = {**DEFAULT_GENERATOR, **_plain(generator or {})}
        discriminator_cfg = {**DEFAULT_DISCRIMINATOR, **_plain(discriminator or {})}
        optimizer_cfg = {**DEFAULT_OPTIMIZER, **_plain(optimizer or {})}
        mel_loss_kwargs = _plain(mel_loss_kwargs or {})

        num_mels = generator_cfg.pop("num_mels", features.num_mels)
        if num_mels != features.num_mels:
            raise ValueError(
                f"model.generator.num_mels = {num_mels} but features.num_mels = {features.num_mels}: "
                "remove num_mels from the generator config (it is taken from features)"
            )
        check_upsampling(generator_cfg["upsample_rates"], features.hop_size)
        if mel_loss not in ("mel", "multiscale"):
            raise ValueError(f"model.mel_loss = {mel_loss!r}: expected 'mel' or 'multiscale'")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"model.grad_clip = {grad_clip}: must be positive, or null to disable clipping")
        unknown = set(discriminator_cfg) - {"mpd", "msd"}
        if unknown:
            raise ValueError(f"model.discriminator has unknown keys {sorted(unknown)}: expected 'mpd' and 'msd'")

        # Plain dicts only: a checkpoint must carry its feature config without melvoc's classes or Hydra.
        self.save_hyperparameters(
            {
                "features": features.to_dict(),
                "loss_features": loss_features.to_dict(),
                "generator": generator_cfg,
                "discriminator": discriminator_cfg,
                "optimizer": optimizer_cfg,
                "lr_decay": float(lr_decay),
                "lambda_mel": float(lambda_mel),
                "lambda_fm": float(lambda_fm),
                "lambda_adv": float(lambda_adv),
                "mel_loss": mel_loss,
                "mel_loss_kwargs": mel_loss_kwargs,
                "grad_clip": None if grad_clip is None else float(grad_clip),
            }
        )
        self.features = features
        self.loss_features = loss_features
        self.generator = Generator(num_mels=features.num_mels, **generator_cfg)
        self.discriminator = CombinedDiscriminator(discriminator_cfg["mpd"], discriminator_cfg["msd"])
        # Only used when a batch arrives without "mel" (the datamodule normally adds it on the device).
        self.mel_spectrogram = MelSpectrogram(features)
        self.mel_loss = self._build_mel_loss(mel_loss, loss_features, mel_loss_kwargs)

    @staticmethod
    def _build_mel_loss(kind: str, config: MelConfig, kwargs: dict[str, Any]) -> torch.nn.Module:
        from melvoc import loss  # imported here so the networks are usable without the loss module

        if kind == "multiscale":
            return loss.MultiScaleMelLoss(sampling_rate=config.sampling_rate, **kwargs)
        if kwargs:
            raise ValueError(f"model.mel_loss_kwargs {kwargs} only apply to mel_loss='multiscale'")
        return loss.MelLoss(config)

    # ------------------------------------------------------------------ inference
    def forward(self, mel: Tensor) -> Tensor:
        """``(B, num_mels, frames) -> (B, frames * hop_size)`` audio in ``[-1, 1]``."""
        return self.generator(mel).squeeze(1)

    def _generator_input(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``mel_target`` (fine-tuning: an acoustic model's mels) if present, else ``mel``, else computed."""
        mel = batch.get("mel_target")
        if mel is None:
            mel = batch.get("mel")
        if mel is None:
            if "audio" not in batch:
                raise KeyError(f"batch has neither 'mel' nor 'audio' (keys: {sorted(batch)})")
            with torch.no_grad():
                mel = self.mel_spectrogram(batch["audio"])
        return self._check_mel(mel).float()

    def _check_mel(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.size(1) != self.features.num_mels:
            raise ValueError(
                f"generator input mel has shape {tuple(mel.shape)}, expected (B, {self.features.num_mels}, frames) "
                f"(features.num_mels = {self.features.num_mels})"
            )
        return mel

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if (
            stage == "fit"
            and isinstance(strategy, DDPStrategy)
            and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False)
        ):
            # Fail before the first step rather than in DDP's reducer after a forward pass.
            raise ValueError(
                "trainer.strategy: DDP without find_unused_parameters cannot train HiFiGAN: the discriminator and the "
                "generator are updated by separate backward passes, each leaving the other network's "
                "parameters without gradients, which DDP rejects unless told so. Use "
                "trainer.strategy=ddp_find_unused_parameters_true."
            )

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        audio = batch["audio"]
        audio, audio_hat = _match_lengths(audio, self(self._generator_input(batch)))
        batch_size = audio.size(0)

        # Discriminator: one forward on real and (detached) fake together.
        logits, _ = self.discriminator(torch.cat([audio, audio_hat.detach()]))
        real_logits, fake_logits = zip(*(lo.chunk(2) for lo in logits))
        loss_d = discriminator_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        with _uncounted(opt_d):
            opt_d.step()

        # Generator: the discriminator's parameters are frozen (toggled) so no gradient is computed for them.
        with self.toggled_optimizer(opt_g):
            with torch.no_grad():
                _, real_fmaps = self.discriminator(audio)
            fake_logits, fake_fmaps = self.discriminator(audio_hat)
            loss_adv = generator_loss(fake_logits)
            loss_fm = feature_matching_loss(real_fmaps, fake_fmaps)
            mel_l1 = self.mel_loss(audio_hat.float(), audio.float())
            hp = self.hparams
            loss_g = hp.lambda_adv * loss_adv + hp.lambda_fm * loss_fm + hp.lambda_mel * mel_l1
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()

        self.log_dict(
            {"train/loss_g": loss_g.detach(), "train/mel_l1": mel_l1.detach()}, prog_bar=True, batch_size=batch_size
        )
        self.log_dict(
            {"train/loss_d": loss_d.detach(), "train/fm": loss_fm.detach(), "train/adv": loss_adv.detach()},
            batch_size=batch_size,
        )
        self.log("train/lr_g", opt_g.optimizer.param_groups[0]["lr"], batch_size=batch_size)
        self.log("train/lr_d", opt_d.optimizer.param_groups[0]["lr"], batch_size=batch_size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after AMP unscaling and before the update, so the norm is that of the true gradients.
        if self.hparams.grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def on_train_start(self) -> None:
        # A checkpoint written on the last batch of an epoch (every_n_train_steps, after validation)
        # precedes that epoch's on_train_epoch_end, and Lightning resumes it in the next epoch without
        # calling the hook: catch up, so that the rate stays lr * lr_decay ** (completed epochs).
        self._decay_to(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        # Manual optimization: Lightning does not step schedulers; HiFi-GAN decays once per epoch.
        # Idempotent: resuming a checkpoint saved at this epoch's end may run this hook again.
        self._decay_to(self.current_epoch + 1)

    def _decay_to(self, epochs: int) -> None:
        with warnings.catch_warnings():
            # After a resume the optimizers did step (before the checkpoint); torch cannot know that.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for scheduler in self._schedulers():
                while scheduler.last_epoch < epochs:
                    scheduler.step()

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        opt = dict(self.hparams.optimizer)
        opt["betas"] = tuple(opt["betas"])
        opt_g = torch.optim.AdamW(self.generator.parameters(), **opt)
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), **opt)
        gamma = self.hparams.lr_decay
        sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=gamma)
        sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=gamma)
        return [opt_g, opt_d], [
            {"scheduler": sched_g, "interval": "epoch", "name": "lr/generator"},
            {"scheduler": sched_d, "interval": "epoch", "name": "lr/discriminator"},
        ]

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Whole clips: ``{"audio_hat": (B, frames * hop)}`` for :class:`melvoc.callbacks.MelLossCallback`."""
        return {"audio_hat": self(self._generator_input(batch)).float()}

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Like :meth:`validation_step`."""
        return {"audio_hat": self(self._generator_input(batch)).float()}

    def predict_step(self, batch: Mapping[str, Tensor] | Tensor, batch_idx: int = 0) -> Tensor:
        """Mel ``(B, num_mels, frames)`` or a batch dict -> audio ``(B, frames * hop)`` float32."""
        mel = self._check_mel(batch) if isinstance(batch, Tensor) else self._generator_input(batch)
        return self(mel).float()
