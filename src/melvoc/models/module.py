"""``GANVocoder``: the one ``LightningModule`` that trains every vocoder family, configured by ``_target_`` nodes.

A family is a generator (any :class:`~melvoc.models.base.VocoderGenerator`), a named set of
discriminators (each ``audio (B, 1, T) -> (logits, feature maps)`` per sub-discriminator), and the
loss and optimizer settings, all in ``conf/model/<name>.yaml``; this module never changes for a new one.

One training step (the order of HiFi-GAN's ``train.py``), with manual optimization::

    mel (B, num_mels, F) --generator--> audio_hat (B, 1, F * hop)
    discriminator step:  sum over discriminators d of w_d * R_k adv_D(D_k(audio), D_k(audio_hat.detach()))
    generator step:      sum over discriminators d of w_d * R_k [lambda_adv * adv_G(D_k(audio_hat)) + lambda_fm * FM_k]
                         + lambda_mel * mel_loss(audio_hat, audio)

``adv`` is ``lsgan`` or ``hinge`` (:mod:`melvoc.models.gan_losses`); ``k`` runs over the
sub-discriminators of ``d`` (periods, scales, resolutions), ``R_k`` is their sum or their mean
(``sub_discriminator_reduction``) and ``w_d`` the weight of ``d`` (``discriminator_weights``).
HiFi-GAN and BigVGAN sum with unit weights; Vocos averages and weighs its MRD by 0.1.
Gradients are clipped per network: the generator, and each named discriminator on its own.

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
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Optional

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from melvoc.features import MelConfig, MelSpectrogram
from melvoc.models.base import VocoderGenerator
from melvoc.models.gan_losses import (
    SUB_DISCRIMINATOR_REDUCTIONS,
    check_adversarial_loss,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)

__all__ = ["GANVocoder"]

Node = Mapping[str, Any]
_LEGACY_DISCRIMINATOR_PREFIX = "discriminator."


def _plain(value: Any) -> Any:
    """OmegaConf nodes, MelConfigs and tuples -> plain dicts and lists (``_target_`` kept), for hparams."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, MelConfig):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Classes that moved, as checkpoints written before the move name them.
_MOVED_TARGETS = {
    "melvoc.loss.MelLoss": "melvoc.models.mel_loss.MelLoss",
    "melvoc.loss.MultiScaleMelLoss": "melvoc.models.mel_loss.MultiScaleMelLoss",
}


def _node(value: Any, where: str, *, optional: bool = False) -> Optional[dict[str, Any]]:
    value = _plain(value)
    if value is None and optional:
        return None
    if not isinstance(value, dict) or "_target_" not in value:
        raise ValueError(f"{where} must be a `_target_` node, got {value!r}")
    moved = _MOVED_TARGETS.get(value["_target_"])
    return value if moved is None else {**value, "_target_": moved}


def _build(node: Node) -> Any:
    # Plain containers in, plain containers to the constructors (no ListConfig in optimizer state).
    return instantiate(node, _convert_="all")


def _discriminator_weights(weights: Any, discriminators: Mapping[str, Any]) -> dict[str, float]:
    """``model.discriminator_weights`` checked against the discriminator names, as plain floats."""
    weights = _plain(weights)
    if not isinstance(weights, dict):
        raise ValueError(f"model.discriminator_weights must map discriminator names to weights, got {weights!r}")
    unknown = sorted(set(weights) - set(discriminators))
    if unknown:
        raise ValueError(
            f"model.discriminator_weights names {', '.join(unknown)}, which model.discriminators does not have "
            f"(it has {', '.join(discriminators)})"
        )
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(
                f"model.discriminator_weights.{name} = {weight!r}: must be a positive number "
                f"(drop a discriminator with model.discriminators.{name}=null)"
            )
    return {str(name): float(weight) for name, weight in weights.items()}


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


def _trim_to_common_length(audio: Tensor, audio_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Trim ``(..., T)`` and ``(..., T')`` to their common length (``center=True`` gives one extra frame)."""
    n = min(audio.size(-1), audio_hat.size(-1))
    return audio[..., :n], audio_hat[..., :n]


class GANVocoder(L.LightningModule):
    """A GAN vocoder of any family, trained with manual optimization; every part comes from config.

    ``hyper_parameters`` (and so every checkpoint) hold the nodes below as plain containers, with
    their ``_target_``; ``load_from_checkpoint`` rebuilds the module from them alone.

    Args:
        features: the mel features the generator consumes (``MelConfig`` or mapping); its
            ``hop_size`` must equal the generator's, ``num_mels`` its input channels.
        loss_features: the mel features of the reconstruction loss (stored with the checkpoint; the
            ``mel_loss`` node receives them by interpolation).
        generator: ``_target_`` node of a :class:`~melvoc.models.base.VocoderGenerator` subclass.
        discriminators: ``{name: _target_ node}``; a ``null`` entry drops that discriminator.
        adversarial_loss: ``"lsgan"`` or ``"hinge"``.
        discriminator_weights: ``{name: weight}`` of a discriminator's adversarial, feature-matching and
            discriminator losses; a name left out weighs 1.
        sub_discriminator_reduction: ``"sum"`` or ``"mean"`` of each loss over a discriminator's
            sub-discriminators.
        lambda_adv, lambda_fm, lambda_mel: weights of the adversarial, feature-matching and mel terms.
        mel_loss: ``_target_`` node of the reconstruction loss (``melvoc.models.mel_loss.MelLoss`` or
            ``MultiScaleMelLoss``), called as ``mel_loss(audio_hat, audio)``.
        optimizer_g, optimizer_d: ``_partial_`` optimizer nodes, called with ``params=``.
        scheduler_g, scheduler_d: ``_partial_`` scheduler nodes, called with ``optimizer=``, or ``None``.
        scheduler_interval: step the schedulers once per ``"epoch"`` or per ``"step"`` (generator update).
        grad_clip_g: max gradient norm of the generator, or ``None``.
        grad_clip_d: max gradient norm of each discriminator separately, or ``None``.
    """

    def __init__(
        self,
        features: MelConfig | Node,
        loss_features: MelConfig | Node,
        generator: Node,
        discriminators: Mapping[str, Optional[Node]],
        adversarial_loss: Literal["lsgan", "hinge"],
        discriminator_weights: Mapping[str, float],
        sub_discriminator_reduction: Literal["sum", "mean"],
        lambda_adv: float,
        lambda_fm: float,
        lambda_mel: float,
        mel_loss: Node,
        optimizer_g: Node,
        optimizer_d: Node,
        scheduler_g: Optional[Node],
        scheduler_d: Optional[Node],
        scheduler_interval: Literal["epoch", "step"],
        grad_clip_g: Optional[float],
        grad_clip_d: Optional[float],
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        features = MelConfig.coerce(features)
        loss_features = MelConfig.coerce(loss_features)
        check_adversarial_loss(adversarial_loss)
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"model.scheduler_interval = {scheduler_interval!r}: expected 'epoch' or 'step'")
        for name, clip in (("grad_clip_g", grad_clip_g), ("grad_clip_d", grad_clip_d)):
            if clip is not None and clip <= 0:
                raise ValueError(f"model.{name} = {clip}: must be positive, or null to disable clipping")
        discriminators = _plain(discriminators)
        if not isinstance(discriminators, dict):
            raise ValueError(f"model.discriminators must map names to `_target_` nodes, got {discriminators!r}")
        discriminator_nodes = {
            name: _node(node, f"model.discriminators.{name}", optional=True) for name, node in discriminators.items()
        }
        if not any(discriminator_nodes.values()):
            raise ValueError("model.discriminators: none is set; give at least one `_target_` node")
        weights = _discriminator_weights(discriminator_weights, discriminator_nodes)
        if sub_discriminator_reduction not in SUB_DISCRIMINATOR_REDUCTIONS:
            raise ValueError(
                f"model.sub_discriminator_reduction = {sub_discriminator_reduction!r}: expected one of "
                f"{', '.join(SUB_DISCRIMINATOR_REDUCTIONS)}"
            )

        # Plain containers only: a checkpoint must rebuild the module without melvoc's classes or Hydra's.
        self.save_hyperparameters(
            {
                "features": features.to_dict(),
                "loss_features": loss_features.to_dict(),
                "generator": _node(generator, "model.generator"),
                "discriminators": discriminator_nodes,
                "adversarial_loss": adversarial_loss,
                "discriminator_weights": weights,
                "sub_discriminator_reduction": sub_discriminator_reduction,
                "lambda_adv": float(lambda_adv),
                "lambda_fm": float(lambda_fm),
                "lambda_mel": float(lambda_mel),
                "mel_loss": _node(mel_loss, "model.mel_loss"),
                "optimizer_g": _node(optimizer_g, "model.optimizer_g"),
                "optimizer_d": _node(optimizer_d, "model.optimizer_d"),
                "scheduler_g": _node(scheduler_g, "model.scheduler_g", optional=True),
                "scheduler_d": _node(scheduler_d, "model.scheduler_d", optional=True),
                "scheduler_interval": scheduler_interval,
                "grad_clip_g": None if grad_clip_g is None else float(grad_clip_g),
                "grad_clip_d": None if grad_clip_d is None else float(grad_clip_d),
            }
        )
        hp = self.hparams
        self.features = features
        self.loss_features = loss_features
        self.generator = self._build_generator(hp.generator, features)
        self.discriminators = nn.ModuleDict(
            {name: _build(node) for name, node in hp.discriminators.items() if node is not None}
        )
        # Only used when a batch arrives without "mel" (the datamodule normally adds it on the device).
        self.mel_spectrogram = MelSpectrogram(features)
        self.mel_loss = _build(hp.mel_loss)

    @staticmethod
    def _build_generator(node: Node, features: MelConfig) -> VocoderGenerator:
        generator = _build(node)
        if not isinstance(generator, VocoderGenerator):
            raise TypeError(
                f"model.generator._target_ = {node['_target_']} built a {type(generator).__name__}, "
                "which is not a melvoc.models.base.VocoderGenerator subclass"
            )
        if generator.num_mels != features.num_mels:
            raise ValueError(
                f"model.generator.num_mels = {generator.num_mels} but features.num_mels = {features.num_mels}: "
                "set num_mels: ${features.num_mels} in the generator node"
            )
        if generator.hop_size != features.hop_size:
            raise ValueError(
                f"model.generator ({node['_target_']}) makes {generator.hop_size} samples per frame, which does "
                f"not match features.hop_size = {features.hop_size}: each mel frame must become exactly "
                f"hop_size samples. Choose a model preset for hop {features.hop_size} (e.g. model=hifigan_v1 "
                f"for 256, model=hifigan_v1_hop512 for 512) or a features preset with hop_size {generator.hop_size}."
            )
        generator.config = features
        return generator

    # ------------------------------------------------------------------ inference
    def forward(self, mel: Tensor) -> Tensor:
        """``(B, num_mels, frames) -> (B, frames * hop_size)`` audio."""
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

    def _vocode_clips(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``(B, frames * hop)`` float32: each clip vocoded alone, from its own ``lengths // hop`` frames.

        In a padded batch the generator would see the padding frames within its receptive field,
        so a clip's output would depend on its batch; here it does not. Samples after a clip's own
        are zero. Batches without ``lengths`` are vocoded whole.
        """
        mel = self._generator_input(batch)
        lengths = batch.get("lengths")
        total = mel.shape[-1]
        if lengths is None:
            return self(mel).float()
        # One host read per evaluation batch: the clips' frame counts slice the mel.
        frames = [min(int(n) // self.features.hop_size, total) for n in torch.as_tensor(lengths).tolist()]
        if all(f == total for f in frames):
            return self(mel).float()
        audio_hat = mel.new_zeros(mel.shape[0], total * self.features.hop_size)
        for row, count in enumerate(frames):
            if count > 0:
                clip = self(mel[row : row + 1, :, :count])[0]
                audio_hat[row, : clip.shape[-1]] = clip.float()
        return audio_hat

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
                "trainer.strategy: DDP without find_unused_parameters cannot train a GANVocoder: the "
                "discriminators and the generator are updated by separate backward passes, each leaving the "
                "other network's parameters without gradients, which DDP rejects unless told so. Use "
                "trainer.strategy=ddp_find_unused_parameters_true."
            )

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        hp = self.hparams
        audio = batch["audio"].unsqueeze(1)
        audio, audio_hat = _trim_to_common_length(audio, self.generator(self._generator_input(batch)))
        batch_size = audio.size(0)

        # Discriminators: one forward each on real and (detached) fake together.
        real_and_fake = torch.cat([audio, audio_hat.detach()])
        loss_d = self.discriminator_loss(real_and_fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        with _uncounted(opt_d):
            opt_d.step()

        # Generator: the discriminators' parameters are frozen (toggled) so no gradient is computed for them.
        with self.toggled_optimizer(opt_g):
            loss_adv, loss_fm = self.adversarial_losses(audio, audio_hat)
            mel_l1 = self.mel_loss(audio_hat.float(), audio.float())
            loss_g = hp.lambda_adv * loss_adv + hp.lambda_fm * loss_fm + hp.lambda_mel * mel_l1
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        if hp.scheduler_interval == "step":
            self._schedule_to(self.global_step)

        self.log_dict(
            {"train/loss_g": loss_g.detach(), "train/mel_l1": mel_l1.detach()}, prog_bar=True, batch_size=batch_size
        )
        self.log_dict(
            {"train/loss_d": loss_d.detach(), "train/fm": loss_fm.detach(), "train/adv": loss_adv.detach()},
            batch_size=batch_size,
        )
        self.log("train/lr_g", opt_g.optimizer.param_groups[0]["lr"], batch_size=batch_size)
        self.log("train/lr_d", opt_d.optimizer.param_groups[0]["lr"], batch_size=batch_size)

    def _scale(self, name: str, sub_discriminators: int) -> float:
        """Weight of one discriminator's summed losses: its ``discriminator_weights`` entry, over ``R_k``."""
        weight = self.hparams.discriminator_weights.get(name, 1.0)
        if self.hparams.sub_discriminator_reduction == "mean":
            return weight / sub_discriminators
        return weight

    def discriminator_loss(self, real_and_fake: Tensor) -> Tensor:
        """Discriminator loss of real and generated audio stacked on the batch: ``(2B, 1, T)`` -> float32 scalar."""
        loss = real_and_fake.new_zeros((), dtype=torch.float32)
        for name, discriminator in self.discriminators.items():
            logits, _ = discriminator(real_and_fake)
            real_logits, fake_logits = zip(*(lo.chunk(2) for lo in logits))
            term = discriminator_loss(real_logits, fake_logits, self.hparams.adversarial_loss)
            loss = loss + self._scale(name, len(logits)) * term
        return loss

    def adversarial_losses(self, audio: Tensor, audio_hat: Tensor) -> tuple[Tensor, Tensor]:
        """Generator's adversarial and feature-matching losses, weighted and reduced, unscaled by the lambdas.

        ``audio``, ``audio_hat``: ``(B, 1, T)``. Returns two float32 scalars.
        """
        loss_adv = audio.new_zeros((), dtype=torch.float32)
        loss_fm = audio.new_zeros((), dtype=torch.float32)
        for name, discriminator in self.discriminators.items():
            with torch.no_grad():
                _, real_fmaps = discriminator(audio)
            fake_logits, fake_fmaps = discriminator(audio_hat)
            scale = self._scale(name, len(fake_logits))
            loss_adv = loss_adv + scale * generator_loss(fake_logits, self.hparams.adversarial_loss)
            loss_fm = loss_fm + scale * feature_matching_loss(real_fmaps, fake_fmaps)
        return loss_adv, loss_fm

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after AMP unscaling and before the update, so the norms are those of the true gradients.
        hp = self.hparams
        opt_g = self.trainer.optimizers[0]
        if optimizer is opt_g:
            if hp.grad_clip_g is not None:
                torch.nn.utils.clip_grad_norm_(self.generator.parameters(), hp.grad_clip_g)
        elif hp.grad_clip_d is not None:
            for discriminator in self.discriminators.values():
                torch.nn.utils.clip_grad_norm_(discriminator.parameters(), hp.grad_clip_d)

    def on_train_start(self) -> None:
        # A checkpoint written on the last batch of an epoch (every_n_train_steps, after validation)
        # precedes that epoch's on_train_epoch_end, and Lightning resumes it in the next epoch without
        # calling the hook: catch up, so that the schedule stands at the completed epochs (or steps).
        self._schedule_to(self.current_epoch if self.hparams.scheduler_interval == "epoch" else self.global_step)

    def on_train_epoch_end(self) -> None:
        # Manual optimization: Lightning does not step schedulers. Idempotent: resuming a checkpoint
        # saved at this epoch's end may run this hook again.
        if self.hparams.scheduler_interval == "epoch":
            self._schedule_to(self.current_epoch + 1)

    def _schedule_to(self, count: int) -> None:
        """Step each scheduler until it has been stepped ``count`` times in all."""
        with warnings.catch_warnings():
            # After a resume the optimizers did step (before the checkpoint); torch cannot know that.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for scheduler in self._schedulers():
                while scheduler.last_epoch < count:
                    scheduler.step()

    def _schedulers(self) -> list[Any]:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        hp = self.hparams
        opt_g = _build(hp.optimizer_g)(params=self.generator.parameters())
        opt_d = _build(hp.optimizer_d)(params=self.discriminators.parameters())
        schedulers = [
            {"scheduler": _build(node)(optimizer=optimizer), "interval": hp.scheduler_interval, "name": name}
            for node, optimizer, name in (
                (hp.scheduler_g, opt_g, "lr/generator"),
                (hp.scheduler_d, opt_d, "lr/discriminator"),
            )
            if node is not None
        ]
        return [opt_g, opt_d], schedulers

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints of the earlier HiFiGAN module kept MPD and MSD under one `discriminator` module;
        # their parameters are those of `discriminators.mpd` / `.msd`, in the same order, so the
        # discriminator optimizer's state fits as it is.
        state = checkpoint.get("state_dict", {})
        legacy = [k for k in state if k.startswith(_LEGACY_DISCRIMINATOR_PREFIX)]
        for key in legacy:
            state["discriminators." + key[len(_LEGACY_DISCRIMINATOR_PREFIX):]] = state.pop(key)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Whole clips, each vocoded alone: ``{"audio_hat": (B, frames * hop)}`` for the validation callbacks."""
        return {"audio_hat": self._vocode_clips(batch)}

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Like :meth:`validation_step`."""
        return {"audio_hat": self._vocode_clips(batch)}

    def predict_step(self, batch: Mapping[str, Tensor] | Tensor, batch_idx: int = 0) -> Tensor:
        """Mel ``(B, num_mels, frames)`` or a batch dict -> audio ``(B, frames * hop)`` float32."""
        if isinstance(batch, Tensor):
            return self(self._check_mel(batch)).float()
        return self._vocode_clips(batch)
