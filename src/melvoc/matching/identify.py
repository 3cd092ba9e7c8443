"""Which parameters made these mels? :func:`identify` (the command: ``python -m melvoc.identify``).

A vocoder fed mels made with other parameters than its training mels produces noise; this tool
finds the :class:`~melvoc.features.MelConfig` that reproduces a set of mel files.

With the audio the mels were made from, :mod:`melvoc.matching.search` fits every knob and verifies
the winners with the features themselves. Without audio, the mels alone show ``num_mels``, the log
floor where it is reached (and with it the log base), and signs of normalisation (per-bin
mean/variance as ESPnet, dB scaling as Coqui TTS): :mod:`melvoc.features.statistics`, which also
guards the pipeline against mismatched mel files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from melvoc.features import MelConfig
from melvoc.features.presets import FIELDS, hydra_value, override_line, same_field
from melvoc.features.statistics import MelStatistics, expected_range, mel_array, mel_statistics
from melvoc.matching.search import DEFAULT_TOLERANCE, Candidate, fit_config

__all__ = ["DEFAULT_TOLERANCE", "Candidate", "Identification", "UsageError", "identify"]


class UsageError(ValueError):
    """Inputs the matching tools cannot work with (the message says which and why)."""


@dataclass
class Identification:
    """The answer of :func:`identify`.

    Attributes:
        config: the MelConfig fields known (all of them when audio reproduced the mels).
        max_error: max abs difference of the reported config's mels, or None without audio.
        reproduces: whether ``max_error`` is within the tolerance.
        preset, override: the closest preset and the Hydra overrides for ``config``.
        candidates: other configs within tolerance (or, when nothing reproduces, the best ones).
        open: knobs the input leaves open, each with what is known of it.
        statistics: what the mels alone show.
    """

    config: dict[str, Any]
    max_error: Optional[float]
    reproduces: bool
    preset: Optional[str]
    override: str
    candidates: list[Candidate]
    open: list[str]
    statistics: MelStatistics
    tolerance: float = DEFAULT_TOLERANCE

    def to_json(self) -> dict[str, Any]:
        """``{"config", "max_error", "preset", "override", "candidates"}``."""
        return {"config": self.config, "max_error": self.max_error, "preset": self.preset,
                "override": self.override, "candidates": [c.to_dict() for c in self.candidates]}



def _open_without_audio(stats: MelStatistics) -> list[str]:
    known = {"num_mels"} | ({"log_base", "clip_val"} if stats.clip_val is not None else set())
    return [f for f in FIELDS if f not in known]


def identify(
    mels: Sequence[np.ndarray | torch.Tensor],
    audios: Optional[Sequence[tuple[np.ndarray, int]]] = None,
    *,
    presets: Optional[Mapping[str, MelConfig]] = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Identification:
    """Identify the MelConfig of ``mels`` (``(num_mels, frames)`` each).

    Args:
        mels: the log-mels; float64 ones are verified in float64, the others in float32.
        audios: ``(audio (T,), sampling_rate)`` per mel, or None (statistics only).
        presets: preset name -> config, for the closest preset and the override line.
        tolerance: max abs error (mels' units) under which a config reproduces the mels.
    """
    arrays = [mel_array(m) for m in mels]
    if not arrays:
        raise UsageError("no mels given")
    if len({a.shape[0] for a in arrays}) != 1:
        counts = sorted({a.shape[0] for a in arrays})
        raise UsageError(f"mels with different band counts {counts}: identify one set at a time")
    stats = mel_statistics(arrays)
    presets = dict(presets or {})
    if not audios:
        return _identify_without_audio(stats, presets, tolerance)
    rates = {rate for _, rate in audios}
    if len(rates) != 1:
        raise UsageError(f"audio at several rates {sorted(rates)}: identify one set at a time")
    rate = rates.pop()
    # the mels as given: their dtype sets the precision of the fit (see fit_config)
    candidates = fit_config(mels, [a for a, _ in audios], rate, tolerance=tolerance, prefer=list(presets.values()))
    if not candidates:
        frames = ", ".join(f"{a.shape[1]} frames / {len(w)} samples" for a, (w, _) in zip(arrays, audios))
        raise UsageError(f"no hop size and padding give these frame counts ({frames}): "
                         "are these the mels of this audio?")
    within = [c for c in candidates if c.max_error <= tolerance]
    for c in candidates:
        c.preset, c.override = override_line(c.config, presets)
    if within:
        # Among the configs that reproduce the mels, the one closest to a preset (knobs the mels
        # leave open then keep the preset's value), then the smallest error.
        def closeness(c: Candidate) -> tuple[int, float]:
            return (len(c.override.split()), c.max_error)

        best = min(within, key=closeness)
        others = [c for c in within if c is not best]
    else:
        best, others = candidates[0], candidates[1:]
    return Identification(
        config=best.config.to_dict(), max_error=best.max_error, reproduces=bool(within),
        preset=best.preset, override=best.override, candidates=others,
        open=_open_with_audio(best, within), statistics=stats, tolerance=tolerance,
    )


def _open_with_audio(best: Candidate, within: Sequence[Candidate]) -> list[str]:
    notes = []
    for name in FIELDS:
        values = sorted({hydra_value(getattr(c.config, name)) for c in within})
        if len(values) > 1:
            notes.append(f"{name}: {', '.join(values)} all reproduce the mels")
    return notes


def _silence_fits(stats: MelStatistics, config: MelConfig) -> bool:
    """Whether the floor the mels show (if any) is what ``config`` gives digital silence."""
    if stats.floor is None and stats.floor_per_band is None:
        return True
    silence, _ = expected_range(config)
    if stats.floor is not None:
        return bool(silence.min() - 0.05 <= stats.floor <= silence.max() + 0.05)
    return bool(np.allclose(stats.floor_per_band, silence, atol=0.05))


def _identify_without_audio(stats: MelStatistics, presets: Mapping[str, MelConfig], tolerance: float) -> Identification:
    config: dict[str, Any] = {"num_mels": stats.num_mels}
    if stats.clip_val is not None and stats.log_base in ("e", "10"):
        config["log_base"], config["clip_val"] = stats.log_base, stats.clip_val
    consistent = [name for name, preset in presets.items()
                  if all(same_field(key, preset, dataclasses.replace(preset, **{key: value}))
                         for key, value in config.items()) and _silence_fits(stats, preset)]
    preset = consistent[0] if len(consistent) == 1 else None
    candidates = [Candidate(presets[name], None, name, f"features={name}") for name in consistent]
    if preset is not None:
        override = f"features={preset}"
    else:
        override = " ".join(f"features.{key}={hydra_value(value)}" for key, value in config.items())
    return Identification(config=config, max_error=None, reproduces=False, preset=preset, override=override,
                          candidates=candidates, open=_open_without_audio(stats), statistics=stats,
                          tolerance=tolerance)


