"""Loading a trained generator for inference: ``load_generator(path)`` -> a ``VocoderGenerator`` with ``.config``.

Two kinds of file are accepted, told apart by their content (not their suffix):

* an exported generator (``python -m melvoc.export``): a ``torch.save`` dict with
  ``format == "melvoc.generator"``, a ``format_version``, the feature config (``features``), the
  generator node (``generator``) and its weights with weight norm folded in;
* a full Lightning checkpoint written by training (``last.ckpt``, ``best_*.ckpt``): the generator's
  weights are taken from ``state_dict["generator.*"]`` and the feature config and generator node
  from ``hyper_parameters``; optimizer state is ignored.

The generator node is ``{"_target_": "<module>.<Class>", **constructor arguments}``. Export format
1 and checkpoints of the earlier ``HiFiGAN`` module stored the arguments without ``_target_``: they
are HiFi-GAN generators and load as :class:`~melvoc.models.hifigan.HiFiGANGenerator`.

Either way the feature config comes from the file, so inference can never use other mel parameters
than training did. Files are read with ``torch.load(weights_only=True)``: plain tensors and
containers only. The ``_target_`` must name a :class:`~melvoc.models.base.VocoderGenerator`
subclass, which is called with the stored arguments as plain data: a checkpoint file cannot make
melvoc call any other function.
"""

from __future__ import annotations

import copy
import importlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from melvoc.features import MelConfig
from melvoc.models.base import VocoderGenerator

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "LEGACY_GENERATOR_TARGET",
    "CheckpointError",
    "GeneratorCheckpoint",
    "build_generator",
    "parse_device",
    "export_state",
    "load_generator",
    "read_checkpoint",
    "weight_norm_state",
]

#: Value of the ``format`` key of an exported generator file.
EXPORT_FORMAT = "melvoc.generator"
#: Version of the exported layout; readers accept this version and older ones. Version 2 stores
#: the generator node with its ``_target_``; version 1 stored HiFi-GAN arguments without it.
EXPORT_FORMAT_VERSION = 2
#: The generator of files that name none (export format 1, checkpoints of the ``HiFiGAN`` module).
LEGACY_GENERATOR_TARGET = "melvoc.models.hifigan.HiFiGANGenerator"

_GENERATOR_PREFIX = "generator."
# ``discriminators.<name>.*`` (GANVocoder); ``discriminator.{mpd,msd}.*`` (the HiFiGAN module).
_DISCRIMINATOR_PREFIXES = ("discriminators.", "discriminator.")
_WEIGHT_NORM_SUFFIXES = (".parametrizations.weight.original0", ".parametrizations.weight.original1")

Device = Union[str, torch.device, None]


class CheckpointError(ValueError):
    """A file that is not a usable melvoc checkpoint; the message names the file and the fix."""


@dataclass
class GeneratorCheckpoint:
    """What a checkpoint file holds about the generator (and, for full checkpoints, the discriminators).

    Attributes:
        path: the file.
        kind: ``"export"`` (a ``python -m melvoc.export`` file), ``"lightning"`` (a training checkpoint)
            or ``"peer:<family>"`` (an official HiFi-GAN, BigVGAN or Vocos checkpoint, :mod:`melvoc.peers`).
        features: the mel features the generator was trained on.
        generator: the generator node, ``{"_target_": ..., **arguments}``, ``num_mels`` included.
        generator_state: the generator's ``state_dict``; with weight norm (parametrised
            ``...parametrizations.weight.original0/1`` keys) when ``weight_norm`` is true, plain otherwise.
        weight_norm: whether ``generator_state`` is in weight-norm form.
        discriminator_state: the discriminators' ``state_dict`` (full checkpoints only), else ``None``;
            keys ``<name>.<parameter>`` as in ``GANVocoder.discriminators``.
        hyper_parameters: the training module's hyper-parameters (full checkpoints only), else ``{}``.
        metadata: where the weights come from (``global_step``, ``epoch``, source checkpoint).
    """

    path: Path
    kind: str
    features: MelConfig
    generator: dict[str, Any]
    generator_state: dict[str, Tensor]
    weight_norm: bool
    discriminator_state: Optional[dict[str, Tensor]] = None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """The one ``--device`` parser of the command line tools: ``"auto"`` -> CUDA when available, else
    CPU; otherwise ``torch.device(device)``, which must exist here.

    Raises:
        ValueError: not a device, or CUDA asked for where there is none (the message says what to use).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: not a device ({exc}); use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return resolved


def _torch_load(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such checkpoint (resolved to {path.resolve()}); give a training checkpoint "
            "(<run>/checkpoints/last.ckpt) or a file written by `python -m melvoc.export`"
        )
    if path.is_dir():
        raise CheckpointError(
            f"{path}: a folder of no known layout; expected a BigVGAN folder (config.json + "
            "bigvgan_generator.pt), a HiFi-GAN folder (config.json + g_XXXXXXXX), a Vocos folder "
            "(config.yaml + pytorch_model.bin), or give a file: a training checkpoint "
            f"(e.g. {path / 'checkpoints' / 'last.ckpt'}) or a `python -m melvoc.export` file"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (torch.save writes zip archives; this is not one): give a "
            "training checkpoint (.ckpt) or a file written by `python -m melvoc.export`"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsupported = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain containers, so it was not written by "
            f"melvoc (its checkpoints and exports load with torch.load(weights_only=True))"
            + (f": {unsupported[0]}" if unsupported else "")
        ) from exc
    except Exception as exc:  # truncated archive, damaged entries, ...
        raise CheckpointError(
            f"{path}: cannot read it as a torch checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
            "the file is truncated or damaged: copy it again or re-export it"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _features(value: Any, path: Path, where: str) -> MelConfig:
    try:
        return MelConfig.coerce(value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid feature config in {where}: {exc}") from exc


def _checked_generator_node(value: Any, features: MelConfig, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{path}: {where} is {type(value).__name__}, expected the generator's node")
    node = {"_target_": LEGACY_GENERATOR_TARGET, **value}
    num_mels = node.setdefault("num_mels", features.num_mels)
    if num_mels != features.num_mels:
        raise CheckpointError(
            f"{path}: generator num_mels={num_mels} disagrees with features.num_mels={features.num_mels}"
        )
    return node


def _generator_class(target: Any, path: Path) -> type[VocoderGenerator]:
    """The class ``target`` names, if it is a :class:`VocoderGenerator` subclass (else ``CheckpointError``)."""
    module_name, _, name = str(target).rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError as exc:
        raise CheckpointError(
            f"{path}: its generator _target_ {target!r} cannot be imported ({exc}); install the package "
            "that defines it"
        ) from exc
    if not (isinstance(found, type) and issubclass(found, VocoderGenerator)):
        raise CheckpointError(
            f"{path}: its generator _target_ {target!r} is not a melvoc VocoderGenerator subclass; a "
            "checkpoint may only name a generator class (e.g. melvoc.models.hifigan.HiFiGANGenerator)"
        )
    return found


def read_checkpoint(path: str | os.PathLike) -> GeneratorCheckpoint:
    """Read an exported generator or a full Lightning checkpoint (on the CPU).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is unreadable, not a melvoc checkpoint, or of a newer export format.
    """
    path = Path(path).expanduser()
    peer = _read_peer(path)
    if peer is not None:
        return peer
    data = _torch_load(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a melvoc checkpoint dict")

    if data.get("format") == EXPORT_FORMAT:
        version = data.get("format_version")
        if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: export format version {version!r}, this melvoc reads versions up to "
                f"{EXPORT_FORMAT_VERSION}; upgrade melvoc"
            )
        for key in ("features", "generator", "state_dict"):
            if key not in data:
                raise CheckpointError(f"{path}: exported generator without its {key!r} entry; re-export it")
        features = _features(data["features"], path, "'features'")
        return GeneratorCheckpoint(
            path=path,
            kind="export",
            features=features,
            generator=_checked_generator_node(data["generator"], features, path, "'generator'"),
            generator_state=dict(data["state_dict"]),
            weight_norm=bool(data.get("weight_norm", False)),
            metadata=dict(data.get("source") or {}),
        )

    if "state_dict" in data and "hyper_parameters" in data:
        hparams = data["hyper_parameters"]
        if not isinstance(hparams, Mapping) or "features" not in hparams or "generator" not in hparams:
            raise CheckpointError(
                f"{path}: a Lightning checkpoint, but its hyper_parameters have no 'features' and "
                "'generator' entries: it was not written by melvoc's GANVocoder module"
            )
        features = _features(hparams["features"], path, "hyper_parameters['features']")
        state = data["state_dict"]
        generator_state = {k[len(_GENERATOR_PREFIX):]: v for k, v in state.items() if k.startswith(_GENERATOR_PREFIX)}
        if not generator_state:
            raise CheckpointError(f"{path}: the checkpoint's state_dict has no 'generator.*' weights")
        discriminator_state = {
            k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(_DISCRIMINATOR_PREFIXES)
        }
        return GeneratorCheckpoint(
            path=path,
            kind="lightning",
            features=features,
            generator=_checked_generator_node(hparams["generator"], features, path, "hyper_parameters['generator']"),
            generator_state=generator_state,
            weight_norm=any(k.endswith(_WEIGHT_NORM_SUFFIXES) for k in generator_state),
            discriminator_state=discriminator_state or None,
            hyper_parameters=dict(hparams),
            metadata={
                "checkpoint": str(path),
                "global_step": data.get("global_step"),
                "epoch": data.get("epoch"),
            },
        )

    if "generator" in data and isinstance(data["generator"], Mapping):
        hint = (
            " It looks like a jik876/hifi-gan or BigVGAN generator file, whose features and layout are "
            "in the config.json beside it: put that config.json in the same folder (HiFi-GAN: g_XXXXXXXX; "
            "BigVGAN: bigvgan_generator.pt) and give the file or the folder."
        )
    else:
        hint = ""
    raise CheckpointError(
        f"{path}: not a melvoc checkpoint (keys: {sorted(map(str, data))[:8]}); expected a training "
        f"checkpoint (.ckpt) or a file written by `python -m melvoc.export`.{hint}"
    )


def _read_peer(path: Path) -> Optional[GeneratorCheckpoint]:
    """A peer's official checkpoint (``melvoc.peers``) as a :class:`GeneratorCheckpoint`, or ``None``."""
    from melvoc.peers import PeerCheckpointError, bigvgan, hifigan, vocos

    for family in (bigvgan, hifigan, vocos):
        if not family.matches(path):
            continue
        try:
            peer = family.read(path)
        except PeerCheckpointError as exc:
            raise CheckpointError(str(exc)) from exc
        discriminator_state = {
            f"{name}.{key}": value
            for name, state in (peer.discriminator_states or {}).items()
            for key, value in state.items()
        }
        return GeneratorCheckpoint(
            path=path,
            kind=f"peer:{peer.family}",
            features=peer.features,
            generator=dict(peer.generator),
            generator_state=dict(peer.generator_state),
            weight_norm=any(k.endswith(_WEIGHT_NORM_SUFFIXES) for k in peer.generator_state),
            discriminator_state=discriminator_state or None,
            metadata={"checkpoint": str(path), "family": peer.family, **peer.metadata},
        )
    return None


def build_generator(checkpoint: GeneratorCheckpoint, *, remove_weight_norm: bool = True) -> VocoderGenerator:
    """The checkpoint's generator with its weights, on the CPU, in eval mode, with ``.config``.

    With ``remove_weight_norm`` (inference) the weight-norm parametrisation is folded into plain
    weights; otherwise the generator keeps it (training, fine-tuning), which a plain (exported)
    state is converted to by :func:`weight_norm_state`.
    """
    node = dict(checkpoint.generator)
    cls = _generator_class(node.pop("_target_", None), checkpoint.path)
    special = sorted(k for k in node if k.startswith("_"))
    if special:
        raise CheckpointError(
            f"{checkpoint.path}: the generator node has Hydra keys {special}; a checkpoint's generator node "
            "holds only _target_ and constructor arguments"
        )
    try:
        generator = cls(**node)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint.path}: cannot build the generator from its arguments: {exc}") from exc
    state = checkpoint.generator_state
    if checkpoint.weight_norm:
        _load(generator, state, checkpoint.path)
        if remove_weight_norm:
            generator.remove_weight_norm()
    elif remove_weight_norm:
        generator.remove_weight_norm()
        _load(generator, state, checkpoint.path)
    else:
        _load(generator, weight_norm_state(generator, state), checkpoint.path)
    generator.config = checkpoint.features
    return generator.eval()


def _load(module: torch.nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the weights do not fit the generator built from the file's own arguments "
            f"({_first_line(exc)}); the file is damaged or was edited"
        ) from exc


def weight_norm_state(generator: torch.nn.Module, plain: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a plain generator ``state_dict`` (weight norm removed) to the weight-norm layout of ``generator``.

    For every weight-normalised convolution of ``generator``, the plain ``<m>.weight`` becomes
    ``<m>.parametrizations.weight.original0`` (the norm ``g``, as ``weight_norm`` initialises it)
    and ``original1`` (the direction ``v = weight``), so that ``g * v / ||v||`` is the plain weight
    again (to float rounding). Other entries are passed through.
    """
    state: dict[str, Tensor] = {}
    modules = dict(generator.named_modules())
    consumed: set[str] = set()
    for key in generator.state_dict():
        if key.endswith(_WEIGHT_NORM_SUFFIXES):
            name = key[: -len(_WEIGHT_NORM_SUFFIXES[0])]
            weight = plain.get(f"{name}.weight")
            if weight is None:
                continue  # reported as a missing key by load_state_dict
            consumed.add(f"{name}.weight")
            dim = modules[name].parametrizations.weight[0].dim
            if key.endswith("original0"):
                state[key] = torch.norm_except_dim(weight, 2, dim)
            else:
                state[key] = weight
        elif key in plain:
            state[key] = plain[key]
            consumed.add(key)
    state.update({k: v for k, v in plain.items() if k not in consumed and k not in state})
    return state


def load_generator(
    path: str | os.PathLike,
    map_location: Device = "cpu",
    *,
    remove_weight_norm: bool = True,
) -> VocoderGenerator:
    """Load a trained generator (any family) for inference, in one call.

    Args:
        path: an exported generator (``python -m melvoc.export``) or a full training checkpoint.
        map_location: device to put the generator on (``"cpu"``, ``"cuda"``, ``torch.device``).
        remove_weight_norm: fold weight norm into plain weights (the default; same outputs, faster).

    Returns:
        The generator in eval mode: ``generator(mel)`` maps ``(B, num_mels, frames)`` log-mels to
        ``(B, 1, frames * hop_size)`` audio. ``generator.config`` is the
        :class:`~melvoc.features.MelConfig` it was trained on; compute its input with
        ``melvoc.MelSpectrogram(generator.config)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is unreadable, not a melvoc checkpoint, or names a generator
            ``_target_`` that is not a ``VocoderGenerator`` subclass.

    Example::

        generator = melvoc.load_generator("generator.pt", map_location="cuda")
        mel = melvoc.MelSpectrogram(generator.config).cuda()(audio)      # (B, num_mels, frames)
        with torch.inference_mode():
            audio_hat = generator(mel).squeeze(1)                         # (B, frames * hop_size)
    """
    generator = build_generator(read_checkpoint(path), remove_weight_norm=remove_weight_norm)
    if map_location is not None:
        generator = generator.to(map_location)
    return generator


def export_state(checkpoint: GeneratorCheckpoint) -> dict[str, Any]:
    """The content of an exported generator file for ``checkpoint`` (weight norm removed)."""
    from melvoc import __version__

    generator = build_generator(checkpoint, remove_weight_norm=True)
    source = dict(checkpoint.metadata)
    if checkpoint.kind == "export":
        source.setdefault("checkpoint", str(checkpoint.path))
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "melvoc_version": __version__,
        "features": checkpoint.features.to_dict(),
        "generator": copy.deepcopy(checkpoint.generator),
        "weight_norm": False,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in generator.state_dict().items()},
        "source": source,
    }
