"""Start-up checks of a training config, before any data is read: no ``???`` left, every interpolation
resolves, the feature fields are valid (named as typed: ``features.n_fft=-5``), the loss and the features
agree on the sampling rate, ``ckpt_path`` exists (``last`` is looked up); and which errors are the
user's (a message and the fix) rather than a bug (a traceback).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

import melvoc
from melvoc.features import MelConfig
from melvoc.training.runs import REQUIRED_MARK

__all__ = [
    "LAST_CKPT",
    "ConfigError",
    "instantiate_group",
    "required_keys",
    "resolve_ckpt_path",
    "user_error_message",
    "validate_config",
]

_T = TypeVar("_T")

LAST_CKPT = "last.ckpt"


class ConfigError(ValueError):
    """A config value that cannot train; the message names the key as the user types it and the fix."""


_PACKAGE_DIR = str(Path(melvoc.__file__).resolve().parent)


def user_error_message(error: BaseException) -> Optional[str]:
    """The message of a known user error (bad config or data), else ``None`` (a bug: keep the traceback).

    Known: OmegaConf's config errors (missing value, interpolation, unknown key), and ``ValueError`` /
    ``FileNotFoundError`` raised by melvoc's own checks (their messages name the file or key, the value
    and the fix), also when Hydra's ``instantiate`` wrapped them (the message then says which config node).
    """
    node = ""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        full_key = str(error).rsplit("full_key:", 1)[-1].strip() if "full_key:" in str(error) else ""
        node = f" (while building `{full_key}`)" if full_key else ""
        error = error.__cause__
    if isinstance(error, OmegaConfBaseException):
        return f"{type(error).__name__}: {error}".split("\n    full_key:")[0]
    if isinstance(error, (ValueError, FileNotFoundError)):
        frames = traceback.extract_tb(error.__traceback__)
        if frames and str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE_DIR):
            return f"{error}{node}"
    return None


# --------------------------------------------------------------------------------------------------
# Start-up checks
# --------------------------------------------------------------------------------------------------


def required_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys that still need a value: ``???`` and ``${melvoc.required:}`` (sorted)."""
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            full = f"{prefix}.{key}" if prefix and isinstance(key, str) else f"{prefix}[{key}]" if prefix else str(key)
            if isinstance(value, str) and (value == "???" or value.replace(" ", "").startswith(REQUIRED_MARK)):
                keys.add(full)
            else:
                walk(value, full)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(keys)


def validate_config(cfg: DictConfig) -> None:
    """Fail fast on a config that cannot train, before any data is read.

    Raises:
        MissingMandatoryValue: a required value (``???`` or ``${melvoc.required:}``, e.g.
            ``data.train_filelist`` of an experiment) was not given; the message lists all of them.
        omegaconf.errors.InterpolationResolutionError: an interpolation does not resolve.
        ConfigError: a ``features`` / ``loss_features`` field is invalid (named as typed:
            ``features.n_fft=-5``), they disagree on the sampling rate, or a group is not an
            instantiable node.
    """
    missing = required_keys(cfg)
    if missing:
        example = " ".join(f"{key}=..." for key in missing)
        raise MissingMandatoryValue(
            f"Missing required config value(s): {', '.join(missing)}. "
            f"Give them on the command line: python train.py ... {example}"
        )
    # Resolve everything once now: a broken interpolation fails here, not in the middle of a run.
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)

    for group in ("data", "model", "trainer"):
        node = cfg.get(group)
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise ConfigError(f"config group `{group}` must be a node with `_target_`, got {node!r}")
    for group in ("callbacks", "logger"):
        node = cfg.get(group)
        if node is None:
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(f"config group `{group}` must map names to `_target_` nodes, got {node!r}")
        for name, entry in node.items():
            if entry is not None and (not isinstance(entry, Mapping) or "_target_" not in entry):
                raise ConfigError(
                    f"{group}.{name} is not a `_target_` node: {entry!r} "
                    f"(disable it with {group}.{name}=null)"
                )

    # Checked here, where the key the user typed is known: inside the model they would be an error of `model`.
    for group in ("features", "loss_features"):
        node = cfg.get(group)
        if isinstance(node, Mapping):
            try:
                MelConfig.coerce(node)
            except (ValueError, TypeError) as error:
                text = str(error)
                raise ConfigError(text.replace("MelConfig.", f"{group}.") if "MelConfig." in text
                                  else f"{group}: {text}") from None
    features, loss_features = cfg.get("features"), cfg.get("loss_features")
    if features is not None and loss_features is not None:
        if features.sampling_rate != loss_features.sampling_rate:
            raise ConfigError(
                f"loss_features.sampling_rate={loss_features.sampling_rate} differs from "
                f"features.sampling_rate={features.sampling_rate}: the loss compares mels of the "
                "same audio, so both must use the audio's rate"
            )


def resolve_ckpt_path(ckpt_path: str | os.PathLike | None, log_dir: str | os.PathLike, task_name: str) -> str | None:
    """The checkpoint to resume from, as an absolute path; ``None`` to start from scratch.

    ``"last"`` is the most recently written resume point of this task (experiment) over all its
    runs and multiruns under ``<log_dir>/<task_name>/``: a ``last.ckpt``, or an ``hpc_ckpt_<n>.ckpt``
    that Lightning saves when SLURM signals a job before its time limit.

    Raises:
        FileNotFoundError: the given file does not exist, or ``last`` found no checkpoint.
    """
    if ckpt_path is None or str(ckpt_path).strip() in ("", "null", "None"):
        return None
    if str(ckpt_path) == "last":
        task_dir = Path(log_dir) / task_name
        candidates = [
            p for pattern in (f"**/{LAST_CKPT}", "**/hpc_ckpt_*.ckpt") for p in task_dir.glob(pattern) if p.is_file()
        ]
        if not candidates:
            raise FileNotFoundError(
                f"ckpt_path=last: no {LAST_CKPT} of task_name={task_name!r} under {task_dir.resolve()} "
                f"(looked in {task_dir}/runs/*/checkpoints/). Start without ckpt_path, check "
                "task_name / experiment / paths.log_dir, or give a file: ckpt_path=/path/to/last.ckpt"
            )
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        return str(newest.resolve())
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no such checkpoint file (resolved to {path.resolve()}); "
            "give the path of a .ckpt file or ckpt_path=last"
        )
    return str(path.resolve())


# --------------------------------------------------------------------------------------------------
# Instantiation
# --------------------------------------------------------------------------------------------------


def instantiate_group(nodes: Mapping[str, Any] | None, group: str, kind: type[_T]) -> list[_T]:
    """Instantiate a config group that maps names to ``_target_`` nodes, in order (``null`` entries skipped).

    ``group`` names the group in errors (``callbacks``, ``logger``); every object must be a ``kind``.

    Raises:
        TypeError: a node built something that is not a ``kind``.
    """
    built = []
    for name, node in (nodes or {}).items():
        if node is None:
            continue
        value = instantiate(node)
        if not isinstance(value, kind):
            raise TypeError(f"{group}.{name}: {node.get('_target_')} is not a lightning {kind.__name__}")
        built.append(value)
    return built


