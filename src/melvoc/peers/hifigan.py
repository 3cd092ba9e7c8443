"""jik876/hifi-gan checkpoints: ``g_XXXXXXXX`` (``{"generator": state_dict}``) with its ``config.json`` beside.

Accepted paths: a ``g_`` file, a ``do_`` file (its ``g_`` of the same step must be beside), or a
training folder (``config.json`` and ``g_`` files; the highest step is taken). When the ``do_`` file
of the step is there, its MPD and MSD (``{"mpd", "msd", "optim_g", "optim_d", "steps", "epoch"}``)
are mapped as well. The optimiser states are not: they index parameters in the peer's order.

Key mapping: old-style weight norm ``weight_g``/``weight_v`` -> ``parametrizations.weight.original0``/
``original1``; old-style spectral norm ``weight_orig``/``weight_u``/``weight_v`` ->
``parametrizations.weight.original``/``0._u``/``0._v``; a plain ``weight`` where melvoc has weight norm
(a checkpoint saved after ``remove_weight_norm``) -> ``g = ||weight||`` per output channel, ``v = weight``.
The helpers here serve :mod:`melvoc.peers.bigvgan` too, whose formats derive from this one.
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from melvoc.features import MelConfig
from melvoc.peers import PeerCheckpoint, PeerCheckpointError

__all__ = ["GENERATOR_TARGET", "MPD_TARGET", "MSD_TARGET", "matches", "read"]

#: The melvoc class of the HiFi-GAN generator (one place, so that a rename is one line).
GENERATOR_TARGET = "melvoc.models.hifigan.HiFiGANGenerator"
MPD_TARGET = "melvoc.models.discriminators.MultiPeriodDiscriminator"
MSD_TARGET = "melvoc.models.discriminators.MultiScaleDiscriminator"
#: jik876's MPD / MSD layer widths (hard-coded in its models.py).
MPD_CHANNELS = (32, 128, 512, 1024, 1024)
MPD_PERIODS = (2, 3, 5, 7, 11)
MSD_CHANNELS = (128, 128, 256, 512, 1024, 1024, 1024)

#: The config.json fields of a HiFi-GAN generator (BigVGAN's are these and its activation fields).
GENERATOR_FIELDS = (
    "num_mels",
    "upsample_rates",
    "upsample_kernel_sizes",
    "upsample_initial_channel",
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
)
_FEATURE_FIELDS = ("sampling_rate", "n_fft", "hop_size", "win_size", "num_mels", "fmin", "fmax")
_STEP_FILE = re.compile(r"^(g|do)_(\d+)$")


# ---------------------------------------------------------------------------------------------
# Helpers shared with melvoc.peers.bigvgan


def read_json_config(path: Path, expected: str) -> dict[str, Any]:
    """The peer's ``config.json`` as a dict, or :class:`PeerCheckpointError` naming the file."""
    if not path.is_file():
        raise PeerCheckpointError(
            f"{path}: not found. {expected} needs the config.json it was trained with beside the weights: "
            "copy it there (it holds the architecture and the mel parameters)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PeerCheckpointError(
            f"{path}: not a readable JSON config ({exc}); expected {expected}'s config.json"
        ) from exc
    if not isinstance(config, dict):
        raise PeerCheckpointError(
            f"{path}: expected a JSON object (the peer's config.json), got {type(config).__name__}"
        )
    return config


def require_fields(config: Mapping[str, Any], fields: Iterable[str], path: Path, expected: str) -> None:
    """Raise :class:`PeerCheckpointError` listing the ``fields`` missing from ``config``."""
    missing = [f for f in fields if f not in config]
    if missing:
        raise PeerCheckpointError(f"{path}: missing field(s) {missing}; expected {expected}")


def load_torch_file(path: Path, expected: str) -> Any:
    """``torch.load`` on CPU with ``weights_only``; unreadable or truncated files raise :class:`PeerCheckpointError`."""
    if not path.is_file():
        raise PeerCheckpointError(f"{path}: not found; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise PeerCheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc}). Expected {expected}; "
            "the file may be truncated (an interrupted download or copy): fetch it again"
        ) from exc


def state_dict_entry(checkpoint: Any, key: str, path: Path, expected: str) -> dict[str, Tensor]:
    """``checkpoint[key]`` as a ``{name: Tensor}`` dict, or :class:`PeerCheckpointError` saying what was found."""
    found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(key), dict):
        raise PeerCheckpointError(f"{path}: expected {expected} (a dict with a {key!r} state dict), found {found}")
    state = checkpoint[key]
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise PeerCheckpointError(f"{path}: {key!r} is not a state dict of tensors; expected {expected}")
    return state


def lineage_mel_config(config: Mapping[str, Any], path: Path) -> MelConfig:
    """The HiFi-GAN / BigVGAN mel lineage (``meldataset.mel_spectrogram``) with the peer's values.

    Reflect padding by ``(n_fft - hop) / 2``, ``center=False``, ``sqrt(|X|^2 + 1e-9)``, librosa's Slaney
    filterbank, ``ln(clamp(x, 1e-5))``; ``fmax: null`` means ``sampling_rate / 2``.
    """
    require_fields(config, _FEATURE_FIELDS, path, "the mel fields of a HiFi-GAN/BigVGAN config.json")
    try:
        return MelConfig(
            sampling_rate=config["sampling_rate"],
            n_fft=config["n_fft"],
            hop_size=config["hop_size"],
            win_size=config["win_size"],
            num_mels=config["num_mels"],
            fmin=float(config["fmin"]),
            fmax=None if config["fmax"] is None else float(config["fmax"]),
            center=False,
            eps=1e-9,
            clip_val=1e-5,
            pad_mode="reflect",
            log_base="e",
            mel_scale="slaney",
            mel_norm="slaney",
        )
    except (ValueError, TypeError) as exc:
        raise PeerCheckpointError(f"{path}: invalid mel parameters: {exc}") from exc


def build_on_meta(node: Mapping[str, Any]) -> nn.Module:
    """Instantiate a ``_target_`` node on the meta device: the key names and shapes, no memory, no init."""
    module_name, _, class_name = node["_target_"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    with torch.device("meta"):
        return cls(**kwargs)


def _weight_norm_from_plain(weight: Tensor) -> tuple[Tensor, Tensor]:
    g = weight.flatten(1).norm(dim=1).view(-1, *([1] * (weight.dim() - 1)))
    return g, weight


def to_melvoc_state(source: Mapping[str, Tensor], model: nn.Module, path: Path, what: str) -> dict[str, Tensor]:
    """Map a peer state dict (old-style weight/spectral norm) to ``model``'s keys; check every key and shape.

    Raises :class:`PeerCheckpointError` naming ``path`` and the first mismatching keys.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        base, _, name = key.rpartition(".")
        prefix = f"{base}." if base else ""
        if name == "weight_g":
            out[f"{prefix}parametrizations.weight.original0"] = value
        elif name == "weight_v" and f"{prefix}weight_orig" in source:
            out[f"{prefix}parametrizations.weight.0._v"] = value
        elif name == "weight_v":
            out[f"{prefix}parametrizations.weight.original1"] = value
        elif name == "weight_orig":
            out[f"{prefix}parametrizations.weight.original"] = value
        elif name == "weight_u":
            out[f"{prefix}parametrizations.weight.0._u"] = value
        elif name == "weight" and f"{prefix}parametrizations.weight.original0" in expected:
            g, v = _weight_norm_from_plain(value)
            out[f"{prefix}parametrizations.weight.original0"] = g
            out[f"{prefix}parametrizations.weight.original1"] = v
        else:
            out[key] = value
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    wrong = [
        f"{k}: {tuple(out[k].shape)} vs {expected[k]}"
        for k in sorted(set(out) & set(expected))
        if tuple(out[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {wrong[:3]})")
        raise PeerCheckpointError(
            f"{path}: the {what} weights do not fit the architecture its config.json describes: "
            f"{'; '.join(parts)} (keys after mapping to melvoc). Use the config.json the checkpoint was trained with"
        )
    return out


def step_files(path: Path, family: str) -> tuple[Path, Optional[Path]]:
    """``(g_ file, do_ file of the same step or None)`` for a ``g_``/``do_`` file or a folder of them."""
    if path.is_dir():
        steps = sorted(
            (int(m.group(2)), p) for p in path.iterdir() if (m := _STEP_FILE.match(p.name)) and m.group(1) == "g"
        )
        if not steps:
            raise PeerCheckpointError(f"{path}: no g_XXXXXXXX generator file in this {family} folder")
        generator = steps[-1][1]
    else:
        m = _STEP_FILE.match(path.name)
        if m is None:
            raise PeerCheckpointError(f"{path}: expected a {family} g_XXXXXXXX or do_XXXXXXXX file, or their folder")
        generator = path.with_name(f"g_{m.group(2)}")
        if m.group(1) == "do" and not generator.is_file():
            raise PeerCheckpointError(
                f"{path}: a discriminator file needs its generator beside it; {generator.name} is missing"
            )
    discriminator = generator.with_name("do_" + generator.name[2:])
    return generator, discriminator if discriminator.is_file() else None


def config_beside(path: Path) -> Path:
    return (path if path.is_dir() else path.parent) / "config.json"


def _has_step_files(path: Path) -> bool:
    if path.is_dir():
        return any(_STEP_FILE.match(p.name) for p in path.iterdir())
    return path.is_file() and _STEP_FILE.match(path.name) is not None


def is_bigvgan_config(path: Path) -> bool:
    """BigVGAN's configs name an ``activation`` (snake / snakebeta); HiFi-GAN's do not."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "activation" in config


# ---------------------------------------------------------------------------------------------
# HiFi-GAN


def matches(path: Path) -> bool:
    """A ``g_``/``do_`` file or a folder of them, with a HiFi-GAN (not BigVGAN) ``config.json`` beside."""
    path = Path(path)
    config = config_beside(path)
    return _has_step_files(path) and config.is_file() and not is_bigvgan_config(config)


def _discriminators(do_file: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Tensor]], dict[str, Any]]:
    expected = "a jik876/hifi-gan do_XXXXXXXX file ({'mpd', 'msd', 'optim_g', 'optim_d', 'steps', 'epoch'})"
    checkpoint = load_torch_file(do_file, expected)
    nodes = {
        "mpd": {"_target_": MPD_TARGET, "periods": list(MPD_PERIODS), "channels": list(MPD_CHANNELS)},
        "msd": {"_target_": MSD_TARGET, "scales": 3, "channels": list(MSD_CHANNELS)},
    }
    states = {
        name: to_melvoc_state(state_dict_entry(checkpoint, name, do_file, expected), build_on_meta(node), do_file, name)
        for name, node in nodes.items()
    }
    meta = {k: checkpoint[k] for k in ("steps", "epoch") if k in checkpoint}
    return nodes, states, meta


def step_checkpoint(
    path: Path,
    family: str,
    config: Mapping[str, Any],
    features: MelConfig,
    node: dict[str, Any],
    generator_file: Path,
    do_file: Optional[Path],
    g_expected: str,
    read_discriminators: Callable[[Path], tuple[dict[str, dict[str, Any]], dict[str, dict[str, Tensor]], dict[str, Any]]],
    rename: Optional[Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]]] = None,
) -> PeerCheckpoint:
    """The :class:`PeerCheckpoint` of a ``g_XXXXXXXX`` (+ optional ``do_XXXXXXXX``) pair.

    Shared by the HiFi-GAN and BigVGAN readers: ``node`` is the generator's Hydra node, ``rename``
    maps the peer's generator keys to melvoc's (identity when None), ``read_discriminators(do_file)``
    returns ``(nodes, states, step metadata)``.
    """
    source = state_dict_entry(load_torch_file(generator_file, g_expected), "generator", generator_file, g_expected)
    if rename is not None:
        source = rename(source)
    state = to_melvoc_state(source, build_on_meta(node), generator_file, "generator")
    metadata: dict[str, Any] = {"config": config, "generator_file": str(generator_file), "discriminator_file": None}
    discriminators = discriminator_states = None
    if do_file is not None:
        discriminators, discriminator_states, step_meta = read_discriminators(do_file)
        metadata.update(step_meta, discriminator_file=str(do_file))
    return PeerCheckpoint(
        path=path,
        family=family,
        features=features,
        generator=node,
        generator_state=state,
        discriminators=discriminators,
        discriminator_states=discriminator_states,
        metadata=metadata,
    )


def read(path: Path) -> PeerCheckpoint:
    """Read a jik876/hifi-gan checkpoint (see the module docstring for the accepted paths)."""
    path = Path(path)
    config_path = config_beside(path)
    expected = "a jik876/hifi-gan config.json (config_v1.json layout)"
    config = read_json_config(config_path, "a HiFi-GAN checkpoint")
    require_fields(config, GENERATOR_FIELDS, config_path, expected)
    features = lineage_mel_config(config, config_path)
    generator_file, do_file = step_files(path, "HiFi-GAN")
    node = {"_target_": GENERATOR_TARGET, **{k: config[k] for k in GENERATOR_FIELDS}}
    node["resblock"] = str(node["resblock"])
    g_expected = "a jik876/hifi-gan g_XXXXXXXX file ({'generator': state_dict})"
    return step_checkpoint(
        path, "hifigan", config, features, node, generator_file, do_file, g_expected, _discriminators
    )
