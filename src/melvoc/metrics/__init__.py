"""Objective vocoder metrics, each from a reference and a predicted waveform at one sampling rate.

| name | definition (details in each function's docstring) | agrees with |
|---|---|---|
| ``pesq`` | wide-band PESQ (ITU-T P.862.2) at 16 kHz (soxr) | the ``pesq`` package, exactly |
| ``mstft`` | BigVGAN's M-STFT: mean over 3 resolutions of spectral convergence + mean abs log-magnitude | auraloss ``MultiResolutionSTFTLoss()`` |
| ``mcd`` | mel-cepstral distortion in dB, c0 excluded, ESPnet framing and (order, alpha) | pysptk ``sp2mc`` / SPTK ``freqt`` |
| ``periodicity`` | RMSE of CREPE periodicity, CARGAN protocol | CARGAN + torchcrepe |
| ``vuv_f1`` | voiced/unvoiced F1, CARGAN protocol (torchcrepe hysteresis) | CARGAN + torchcrepe |
| ``f0_rmse`` | F0 RMSE in cents over frames voiced in both | CARGAN's ``pitch`` metric |

:func:`score` computes any subset at once and tracks the pitch of each waveform only once.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from melvoc.metrics.crepe import CREPE_MODELS, load_crepe
from melvoc.metrics.perceptual import PESQ_MISSING, pesq, pesq_available
from melvoc.metrics.pitch import PitchTrack, f0_rmse, periodicity, pitch_scores, pitch_track, vuv_f1
from melvoc.metrics.spectral import mcd, mstft

__all__ = [
    "ALL_METRICS",
    "CREPE_MODELS",
    "DEFAULT_METRICS",
    "HIGHER_IS_BETTER",
    "PITCH_METRICS",
    "PitchTrack",
    "f0_rmse",
    "load_crepe",
    "mean_ci95",
    "mcd",
    "mstft",
    "parse_metrics",
    "periodicity",
    "pesq",
    "pesq_available",
    "pitch_scores",
    "pitch_track",
    "score",
    "vuv_f1",
]

Audio = Union[np.ndarray, Tensor]

#: The five metrics BigVGAN reports, in its table's order.
DEFAULT_METRICS = ("pesq", "mstft", "mcd", "periodicity", "vuv_f1")
ALL_METRICS = (*DEFAULT_METRICS, "f0_rmse")
PITCH_METRICS = ("periodicity", "vuv_f1", "f0_rmse")
HIGHER_IS_BETTER = {"pesq": True, "mstft": False, "mcd": False, "periodicity": False, "vuv_f1": True,
                    "f0_rmse": False}
_SPECTRAL: dict[str, Callable[[Audio, Audio, int], float]] = {"pesq": pesq, "mstft": mstft, "mcd": mcd}


def parse_metrics(names: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``"pesq,mcd"`` or a sequence -> a tuple of known names in the given order.

    Raises:
        ValueError: an unknown name, no name, or ``pesq`` where the optional ``pesq`` package is absent
            (the message says how to install it or leave it out).
    """
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n) for n in names]
    items = [n for n in items if n]
    unknown = [n for n in items if n not in ALL_METRICS]
    if unknown or not items:
        raise ValueError(
            f"metrics {', '.join(unknown) or '(none)'}: choose from {', '.join(ALL_METRICS)}"
        )
    if "pesq" in items and not pesq_available():
        raise ValueError(f"metrics {', '.join(items)}: {PESQ_MISSING}")
    return tuple(dict.fromkeys(items))


def score(
    reference: Audio,
    predicted: Audio,
    sampling_rate: int,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    pitch_model: str = "full",
    reference_track: Optional[PitchTrack] = None,
    device: Union[str, torch.device] = "cpu",
) -> dict[str, float]:
    """The requested metrics of one pair of mono waveforms ``(T,)`` at ``sampling_rate``.

    Args:
        reference, predicted: the waveforms, trimmed to the shorter.
        metrics: names from :data:`ALL_METRICS`.
        pitch_model: CREPE capacity for the pitch metrics (``full`` or ``tiny``).
        reference_track: the reference's :func:`pitch_track`, if already computed (it does not
            depend on the prediction; several predicted sets can share it).
        device: where CREPE runs.

    Returns:
        ``{name: value}`` in the order of ``metrics``; ``f0_rmse`` is NaN without frames voiced in both.
    """
    names = parse_metrics(metrics)
    values: dict[str, float] = {}
    pitched: dict[str, float] = {}
    if any(name in PITCH_METRICS for name in names):
        ref_track = reference_track or pitch_track(reference, sampling_rate, model=pitch_model, device=device)
        pitched = pitch_scores(ref_track, pitch_track(predicted, sampling_rate, model=pitch_model, device=device))
    for name in names:
        values[name] = pitched[name] if name in PITCH_METRICS else _SPECTRAL[name](reference, predicted, sampling_rate)
    return values


def mean_ci95(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, half-width of the 95 % confidence interval (Student t) and count of the finite values."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(finite.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(finite[0]), float("nan"), 1
    half = stats.t.ppf(0.975, n - 1) * finite.std(ddof=1) / math.sqrt(n)
    return float(finite.mean()), float(half), n
