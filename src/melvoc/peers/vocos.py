"""gemelo-ai/vocos checkpoints: a folder with ``config.yaml`` and ``pytorch_model.bin`` (``charactr/vocos-mel-24khz``).

``config.yaml`` names three classes with their ``init_args``; melvoc reads the mel variant:

- ``vocos.feature_extractors.MelSpectrogramFeatures`` (``sample_rate, n_fft, hop_length, n_mels, padding``):
  torchaudio's ``MelSpectrogram(power=1)`` (window = ``n_fft``, HTK scale, no filterbank norm, 0 Hz to
  sr/2) and ``log(clamp(x, 1e-7))``. ``padding: center`` is ``center=True``; ``padding: same`` is a reflect
  pad of ``(n_fft - hop) // 2`` and ``center=False``.
- ``vocos.models.VocosBackbone`` and ``vocos.heads.ISTFTHead`` -> :class:`melvoc.models.vocos.VocosGenerator`.

``pytorch_model.bin`` is the state dict of Vocos' ``Vocos`` module; the ``backbone.*`` and ``head.out.*``
tensors keep their names, the constant buffers (mel filterbank, windows) are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from melvoc.features import MelConfig
from melvoc.peers import PeerCheckpoint, PeerCheckpointError

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "matches", "read"]

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "pytorch_model.bin"
GENERATOR_TARGET = "melvoc.models.vocos.VocosGenerator"

_MEL_FEATURES = "vocos.feature_extractors.MelSpectrogramFeatures"
_ENCODEC_FEATURES = "vocos.feature_extractors.EncodecFeatures"
_BACKBONE = "vocos.models.VocosBackbone"
_HEAD = "vocos.heads.ISTFTHead"
# The constructor defaults of those Vocos classes: a config may leave any of these out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    _MEL_FEATURES: {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "n_mels": 100, "padding": "center"},
    _BACKBONE: {"layer_scale_init_value": None, "adanorm_num_embeddings": None},
    _HEAD: {"padding": "same"},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    _MEL_FEATURES: (),
    _BACKBONE: ("input_channels", "dim", "intermediate_dim", "num_layers"),
    _HEAD: ("dim", "n_fft", "hop_length"),
}
# Buffers of Vocos' module that melvoc recomputes (torchaudio filterbank and windows).
_CONSTANT_KEYS = ("feature_extractor.", "head.istft.window")


def _folder(path: Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE) else path


def _is_vocos_config(config_path: Path) -> bool:
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"feature_extractor", "backbone", "head"} <= set(config)


def matches(path: Path) -> bool:
    """Whether ``path`` is (a file in) a Vocos folder: ``config.yaml`` with Vocos' three sections, or a
    ``pytorch_model.bin`` without the ``config.json`` of other ``pytorch_model.bin`` layouts."""
    folder = _folder(Path(path))
    if not folder.is_dir():
        return False
    if (folder / CONFIG_FILE).is_file():
        return _is_vocos_config(folder / CONFIG_FILE)
    return (folder / WEIGHTS_FILE).is_file() and not (folder / "config.json").is_file()


def _section(config: Mapping[str, Any], name: str, expected: str, config_path: Path) -> dict[str, Any]:
    """``init_args`` of ``config[name]`` (with Vocos' defaults) after checking its ``class_path``."""
    node = config.get(name)
    if not isinstance(node, Mapping) or "class_path" not in node:
        raise PeerCheckpointError(
            f"{config_path}: no '{name}' entry with a class_path; a Vocos config.yaml has "
            "feature_extractor, backbone and head, each {class_path, init_args}"
        )
    class_path = str(node["class_path"])
    if class_path == _ENCODEC_FEATURES:
        raise PeerCheckpointError(
            f"{config_path}: feature_extractor {class_path} is not supported: melvoc's Vocos vocodes mel "
            f"spectrograms ({_MEL_FEATURES}, e.g. charactr/vocos-mel-24khz); EnCodec-token checkpoints "
            "(charactr/vocos-encodec-24khz) need the vocos package"
        )
    if class_path != expected:
        raise PeerCheckpointError(
            f"{config_path}: {name} {class_path} is not supported; melvoc reads {expected} here "
            f"(Vocos' mel vocoder: {_MEL_FEATURES}, {_BACKBONE}, {_HEAD})"
        )
    args = node.get("init_args") or {}
    if not isinstance(args, Mapping):
        raise PeerCheckpointError(f"{config_path}: {name}.init_args is {args!r}, expected a mapping")
    args = {**_DEFAULTS.get(expected, {}), **args}
    missing = [key for key in _REQUIRED[expected] if key not in args]
    if missing:
        raise PeerCheckpointError(f"{config_path}: {name}.init_args lacks {missing} ({expected} needs them)")
    return args


def _vocos_features(args: Mapping[str, Any], config_path: Path) -> MelConfig:
    unknown = sorted(set(args) - set(_DEFAULTS[_MEL_FEATURES]))
    if unknown:
        raise PeerCheckpointError(f"{config_path}: feature_extractor.init_args has unknown keys {unknown}")
    padding = args["padding"]
    if padding not in ("center", "same"):
        raise PeerCheckpointError(
            f"{config_path}: feature_extractor padding={padding!r}; Vocos allows 'center' or 'same'"
        )
    try:
        return MelConfig(
            sampling_rate=args["sample_rate"],
            n_fft=args["n_fft"],
            hop_size=args["hop_length"],
            win_size=args["n_fft"],
            num_mels=args["n_mels"],
            fmin=0.0,
            fmax=None,
            center=padding == "center",
            eps=0.0,
            clip_val=1e-7,
            pad_mode="none" if padding == "center" else "reflect",
            log_base="e",
            mel_scale="htk",
            mel_norm=None,
        )
    except ValueError as exc:
        raise PeerCheckpointError(f"{config_path}: feature_extractor.init_args {dict(args)}: {exc}") from exc


def _vocos_generator_node(
    features: MelConfig, backbone: Mapping[str, Any], head: Mapping[str, Any], config_path: Path
) -> dict[str, Any]:
    checks = (
        ("backbone.input_channels", backbone["input_channels"], "feature_extractor.n_mels", features.num_mels),
        ("head.dim", head["dim"], "backbone.dim", backbone["dim"]),
        ("head.hop_length", head["hop_length"], "feature_extractor.hop_length", features.hop_size),
    )
    for name, value, other, expected in checks:
        if value != expected:
            raise PeerCheckpointError(f"{config_path}: {name}={value} but {other}={expected}; they must agree")
    if backbone["adanorm_num_embeddings"] is not None:
        raise PeerCheckpointError(
            f"{config_path}: backbone.adanorm_num_embeddings={backbone['adanorm_num_embeddings']} (EnCodec "
            "bandwidth conditioning) is not supported; melvoc's Vocos takes mels"
        )
    unknown = sorted(set(backbone) - set(_REQUIRED[_BACKBONE]) - set(_DEFAULTS[_BACKBONE]))
    unknown += sorted(set(head) - set(_REQUIRED[_HEAD]) - set(_DEFAULTS[_HEAD]))
    if unknown:
        raise PeerCheckpointError(f"{config_path}: backbone/head init_args have unknown keys {unknown}")
    return {
        "_target_": GENERATOR_TARGET,
        "num_mels": features.num_mels,
        "dim": backbone["dim"],
        "intermediate_dim": backbone["intermediate_dim"],
        "num_layers": backbone["num_layers"],
        "n_fft": head["n_fft"],
        "hop_length": head["hop_length"],
        "padding": head["padding"],
        # Vocos reads any falsy value as 1 / num_layers.
        "layer_scale_init_value": backbone["layer_scale_init_value"] or None,
    }


def _load_state(weights_path: Path) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise PeerCheckpointError(
            f"{weights_path}: missing; a Vocos folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(as charactr/vocos-mel-24khz ships them)"
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        raise PeerCheckpointError(
            f"{weights_path}: cannot be read as a PyTorch state dict (truncated or not a torch file?): {exc}"
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PeerCheckpointError(
            f"{weights_path}: holds {type(state).__name__}, expected the state dict of Vocos' module "
            "(backbone.* and head.* tensors)"
        )
    return dict(state)


def _generator_state(
    state: Mapping[str, torch.Tensor], node: Mapping[str, Any], weights_path: Path
) -> dict[str, torch.Tensor]:
    from melvoc.models.vocos import VocosGenerator

    kept = {k: v for k, v in state.items() if not k.startswith(_CONSTANT_KEYS)}
    with torch.device("meta"):
        expected = VocosGenerator(**{k: v for k, v in node.items() if k != "_target_"}).state_dict()
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    wrong = [
        f"{k} {tuple(kept[k].shape)} (config gives {tuple(expected[k].shape)})"
        for k in sorted(set(kept) & set(expected))
        if kept[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else ""]
        parts.append(f"wrong shapes {wrong[:5]}" if wrong else "")
        raise PeerCheckpointError(
            f"{weights_path}: does not fit its {CONFIG_FILE} "
            f"({'; '.join(p for p in parts if p)}); the two files must come from the same Vocos model"
        )
    return {k: kept[k].float() if kept[k].is_floating_point() else kept[k] for k in expected}


def read(path: Path) -> PeerCheckpoint:
    """Map a Vocos folder (or its ``config.yaml`` / ``pytorch_model.bin``) to a :class:`PeerCheckpoint`.

    Raises :class:`~melvoc.peers.PeerCheckpointError` for a missing or unreadable file, EnCodec features
    or another unsupported class, inconsistent settings, and weights that do not fit the config.
    """
    folder = _folder(Path(path))
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise PeerCheckpointError(f"{path}: not found; expected a Vocos folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not config_path.is_file():
        raise PeerCheckpointError(
            f"{config_path}: missing; a Vocos folder holds {CONFIG_FILE} (the model's classes and settings) "
            f"next to {WEIGHTS_FILE}. Download both from the model's page (e.g. charactr/vocos-mel-24khz)"
        )
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PeerCheckpointError(f"{config_path}: not readable YAML: {exc}") from exc
    if not isinstance(config, Mapping):
        raise PeerCheckpointError(f"{config_path}: holds {type(config).__name__}, expected a mapping")

    features = _vocos_features(_section(config, "feature_extractor", _MEL_FEATURES, config_path), config_path)
    node = _vocos_generator_node(
        features,
        _section(config, "backbone", _BACKBONE, config_path),
        _section(config, "head", _HEAD, config_path),
        config_path,
    )
    state = _generator_state(_load_state(weights_path), node, weights_path)
    return PeerCheckpoint(
        path=folder,
        family="vocos",
        features=features,
        generator=node,
        generator_state=state,
        metadata={"config": str(config_path), "weights": str(weights_path)},
    )
