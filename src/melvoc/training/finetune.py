"""Fine-tuning from a trained vocoder: :class:`InitFromCheckpoint` loads its weights before training.

HiFi-GAN's fine-tuning recipe trains a pretrained vocoder further on mels that an acoustic model
predicts with teacher forcing (aligned with the ground-truth audio), so that the vocoder learns the
acoustic model's errors. In melvoc that is ``experiment=finetune_hifigan``: the data module reads
the mels from ``data.mel_dir`` and this callback initializes the model from ``init_from``::

    python train.py experiment=finetune_hifigan init_from=generator.pt \\
        data.train_filelist=train.txt data.val_filelist=val.txt data.mel_dir=gta_mels/

The start can be an exported generator (``python -m melvoc.export``; the discriminators then start
fresh) or a full training checkpoint (generator and, each when it fits, the discriminators). Only weights
are taken: optimizer state, step counter and schedules start anew. To continue an interrupted
fine-tuning run, resume it with ``ckpt_path=...`` as any run: the weights then come from that
checkpoint and this callback does nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Optional

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.callbacks import Callback

from melvoc.features import MelConfig
from melvoc.deploy.inference import CheckpointError, GeneratorCheckpoint, read_checkpoint, weight_norm_state

__all__ = ["InitFromCheckpoint"]

log = logging.getLogger(__name__)


def _config_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = list(dict.fromkeys([*theirs, *ours]))
    return [(k, ours.get(k), theirs.get(k)) for k in keys if _normalize(ours.get(k)) != _normalize(theirs.get(k))]


def _execution_options(*nodes: Mapping[str, Any]) -> set[str]:
    """The generator classes' ``execution_options``: switches of how, not what, a generator computes."""
    names: set[str] = set()
    for node in nodes:
        try:
            names.update(getattr(get_class(str(node.get("_target_"))), "execution_options", ()))
        except (ImportError, ValueError):
            continue
    return names


def _normalize(value: Any) -> Any:
    # YAML lists vs. tuples, "1" vs. 1 for the resblock type, ints vs. floats.
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def _override(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override(v) for v in value) + "]"
    return str(value)


class InitFromCheckpoint(Callback):
    """Initialize a fresh run's generator (and discriminators) from a trained checkpoint.

    The weights are loaded once, at the first of ``validate`` / ``fit`` start, so that the baseline
    validation before training already measures the starting vocoder. Nothing is loaded when the
    trainer restores a checkpoint (``ckpt_path``, i.e. a resumed run), whose weights take precedence.

    The checkpoint's feature config and generator node (class and arguments) must equal the run's
    (a mismatch is an error that lists the overrides to give); the module must expose
    ``generator``, ``discriminators`` (a ``ModuleDict``) and ``features``, as
    :class:`melvoc.models.GANVocoder` does.

    Args:
        path: an exported generator (``python -m melvoc.export``), a full training checkpoint, or an
            official HiFi-GAN, BigVGAN or Vocos checkpoint (:mod:`melvoc.peers`); ``None``: do nothing
            (the default callbacks hold one with ``path: ${init_from}``).
        load_discriminators: take the discriminators from a full checkpoint too, matched by name
            (an exported generator has none; they then start from their random initialization).
        strict_discriminators: a run's discriminator that the full checkpoint lacks or whose
            weights do not fit (other widths, periods or scales) is an error; when false (the
            default) it starts fresh, with a warning.
    """

    def __init__(
        self,
        path: Optional[str | os.PathLike],
        load_discriminators: bool = True,
        strict_discriminators: bool = False,
    ) -> None:
        super().__init__()
        if path is not None and str(path).strip() in ("", "???"):
            raise ValueError("InitFromCheckpoint needs a path: init_from=/path/to/generator.pt (or a .ckpt)")
        self.path = None if path is None else str(path)
        self.load_discriminators = bool(load_discriminators)
        self.strict_discriminators = bool(strict_discriminators)
        self._done = False
        #: What was loaded: ``{"generator": True, "discriminators": [names], "source": {...}}`` once done.
        self.loaded: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ hooks
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_load(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_load(trainer, pl_module)

    def _maybe_load(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._done or self.path is None:
            return
        self._done = True
        if trainer.ckpt_path:
            log.info("init_from %s not applied: the run restores %s", self.path, trainer.ckpt_path)
            return
        self.loaded = self.apply(pl_module)

    # ------------------------------------------------------------------ loading
    def apply(self, pl_module: L.LightningModule) -> dict[str, Any]:
        """Load the checkpoint's weights into ``pl_module`` now (in place: optimizers keep their tensors)."""
        checkpoint = read_checkpoint(self.path)
        self._check_compatible(checkpoint, pl_module)
        generator = pl_module.generator
        state = checkpoint.generator_state
        module_has_weight_norm = any(".parametrizations." in k for k in generator.state_dict())
        if module_has_weight_norm and not checkpoint.weight_norm:
            state = weight_norm_state(generator, state)
        elif checkpoint.weight_norm and not module_has_weight_norm:
            raise CheckpointError(
                f"{checkpoint.path}: weight-norm generator weights, but the run's generator has weight "
                "norm removed; fine-tune a generator with weight norm (as training builds it)"
            )
        with torch.no_grad():
            generator.load_state_dict(state, strict=True)

        discriminators = self._load_discriminators(checkpoint, pl_module)
        step = checkpoint.metadata.get("global_step")
        log.info(
            "initialized the generator%s from %s (%s%s); optimizers and step counter start fresh",
            f" and discriminators {', '.join(discriminators)}" if discriminators else "",
            checkpoint.path,
            {"export": "exported generator", "lightning": "training checkpoint"}.get(
                checkpoint.kind, f"official {checkpoint.kind.removeprefix('peer:')} checkpoint"
            ),
            f", step {step}" if step is not None else "",
        )
        return {"generator": True, "discriminators": discriminators, "source": dict(checkpoint.metadata)}

    def _check_compatible(self, checkpoint: GeneratorCheckpoint, pl_module: L.LightningModule) -> None:
        features: MelConfig = MelConfig.coerce(pl_module.features)
        problems = [
            f"features.{key}={_override(theirs)} (this run: {_override(ours)})"
            for key, ours, theirs in _config_differences(features.to_dict(), checkpoint.features.to_dict())
        ]
        ours_generator = dict(getattr(pl_module.hparams, "generator", None) or {})
        ours_generator.setdefault("num_mels", features.num_mels)
        ignored = {"num_mels", *_execution_options(ours_generator, checkpoint.generator)}
        problems += [
            f"model.generator.{key}={_override(theirs)} (this run: {_override(ours)})"
            for key, ours, theirs in _config_differences(ours_generator, checkpoint.generator)
            if key not in ignored
        ]
        if problems:
            raise CheckpointError(
                f"init_from={checkpoint.path} was trained with other settings than this run; pick the "
                "features and model presets it was trained with, or override these values:\n  "
                + "\n  ".join(problems)
            )

    def _load_discriminators(self, checkpoint: GeneratorCheckpoint, pl_module: L.LightningModule) -> list[str]:
        """Load each of the run's discriminators that the checkpoint has with fitting weights; their names."""
        if not self.load_discriminators:
            return []
        if checkpoint.discriminator_state is None:
            log.info("%s has no discriminators (an exported generator): they start fresh", checkpoint.path)
            return []
        loaded = []
        for name, discriminator in pl_module.discriminators.items():
            ours = discriminator.state_dict()
            theirs = {
                k[len(name) + 1 :]: v for k, v in checkpoint.discriminator_state.items() if k.startswith(f"{name}.")
            }
            mismatched = sorted(
                k for k in set(ours) | set(theirs)
                if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape
            )
            if mismatched:
                message = (
                    f"init_from={checkpoint.path}: "
                    + (
                        f"its discriminator {name!r} does not fit this run's model.discriminators.{name} "
                        f"({len(mismatched)} tensors differ, e.g. {', '.join(mismatched[:3])})"
                        if theirs
                        else f"it has no discriminator {name!r}"
                    )
                )
                if self.strict_discriminators:
                    raise CheckpointError(message + f"; use the checkpoint's model.discriminators.{name} settings")
                log.warning("%s: it starts fresh (strict_discriminators=false)", message)
                continue
            with torch.no_grad():
                discriminator.load_state_dict(theirs, strict=True)
            loaded.append(name)
        return loaded
