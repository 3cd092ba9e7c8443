"""The feature presets of ``conf/features/*.yaml`` as :class:`~melvoc.features.MelConfig` objects (the YAML is
their one source), and the Hydra overrides that turn a preset into any other config."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from melvoc.features.config import MelConfig

__all__ = ["FIELDS", "PresetError", "find_conf_dir", "hydra_value", "load_presets", "override_line", "read_preset",
           "same_field"]

#: The ``MelConfig`` fields, in their order.
FIELDS = tuple(f.name for f in dataclasses.fields(MelConfig))


class PresetError(ValueError):
    """No preset folder, or a preset that is not a valid ``MelConfig`` (the message names the file)."""


def find_conf_dir(explicit: str | Path | None = None) -> Path:
    """The ``conf/features`` folder: ``explicit``, else under the cwd, else in this package's repository.

    Raises:
        PresetError: none found (a wheel install without the repository: pass the folder explicitly).
    """
    if explicit is not None:
        folder = Path(explicit)
        if not folder.is_dir():
            raise PresetError(f"--conf-dir {folder}: not a directory (expected the repository's conf/features)")
        return folder
    for folder in (Path.cwd() / "conf" / "features", Path(__file__).resolve().parents[3] / "conf" / "features"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    raise PresetError(
        "no conf/features/*.yaml found in the current folder or the melvoc repository; run from the "
        "repository or pass --conf-dir path/to/conf/features"
    )


def read_preset(path: Path) -> MelConfig:
    """One preset YAML as a :class:`MelConfig` (``_target_`` ignored)."""
    from omegaconf import OmegaConf

    try:
        return MelConfig.coerce(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except Exception as error:  # YAML syntax, interpolation or MelConfig validation errors alike
        raise PresetError(f"{path}: not a valid MelConfig preset: {error}") from error


def load_presets(conf_dir: str | Path | None = None) -> dict[str, MelConfig]:
    """Every preset of ``conf/features`` (see :func:`find_conf_dir`), by name, sorted."""
    folder = find_conf_dir(conf_dir)
    return {path.stem: read_preset(path) for path in sorted(folder.glob("*.yaml"))}


def same_field(field_name: str, a: MelConfig, b: MelConfig) -> bool:
    """Whether ``a`` and ``b`` agree on ``field_name`` (floats within rounding; ``fmax`` as the effective value)."""
    if field_name == "fmax":
        return math.isclose(a.f_max, b.f_max)
    if field_name in ("fmin", "eps", "clip_val"):
        return math.isclose(float(getattr(a, field_name)), float(getattr(b, field_name)), rel_tol=1e-9)
    return getattr(a, field_name) == getattr(b, field_name)


def hydra_value(value: Any) -> str:
    """``value`` as a Hydra command-line override writes it (``null``, ``true``, ``1e-05``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if value == 0 or 1e-4 <= abs(value) < 1e7 else f"{value:.6g}"
    return str(value)


def override_line(config: MelConfig, presets: Mapping[str, MelConfig]) -> tuple[Optional[str], str]:
    """The closest preset (fewest differing fields) and the Hydra overrides that turn it into ``config``.

    Example: ``("hifigan_22k", "features=hifigan_22k features.fmax=null")``; without presets, one
    ``features.<field>=...`` override per field.
    """
    best: Optional[tuple[int, str]] = None
    for name, preset in presets.items():
        differing = sum(not same_field(f, config, preset) for f in FIELDS)
        if best is None or differing < best[0]:
            best = (differing, name)
    if best is None:
        return None, " ".join(f"features.{f}={hydra_value(getattr(config, f))}" for f in FIELDS)
    name = best[1]
    parts = [f"features={name}"]
    parts += [f"features.{f}={hydra_value(getattr(config, f))}"
              for f in FIELDS if not same_field(f, config, presets[name])]
    return name, " ".join(parts)


