"""PESQ, wide-band (ITU-T P.862.2), through the ``pesq`` package."""

from __future__ import annotations

from typing import Union

import importlib.util
from types import ModuleType

import numpy as np
import soxr
from torch import Tensor

__all__ = ["PESQ_MISSING", "PESQ_RATE", "pesq", "pesq_available"]

Audio = Union[np.ndarray, Tensor]

PESQ_RATE = 16000

#: Why pesq cannot run where the ``pesq`` package is absent, and the two ways out.
PESQ_MISSING = (
    "the pesq package is not installed (it has no wheels: pip builds it from source, which needs a C "
    "compiler): install it with pip install 'melvoc[pesq]' after installing a compiler (Debian/Ubuntu: "
    "apt-get install gcc python3-dev; macOS: xcode-select --install; Windows: Microsoft C++ Build Tools), "
    "or leave pesq out of the metrics (e.g. callbacks.quality.metrics=[mstft,mcd,periodicity,vuv_f1], "
    "python -m melvoc.evaluate ... --metrics mstft,mcd,periodicity,vuv_f1)"
)


def pesq_available() -> bool:
    """Whether the ``pesq`` package (an optional dependency: ``melvoc[pesq]``) can be imported."""
    return importlib.util.find_spec("pesq") is not None


def _pesq_package() -> ModuleType:
    if not pesq_available():
        raise ModuleNotFoundError(f"pesq: {PESQ_MISSING}")
    import pesq as package

    return package


def _mono16k(audio: Audio, sampling_rate: int, name: str) -> np.ndarray:
    if isinstance(audio, Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size != max(audio.shape, default=0):
        raise ValueError(f"pesq {name}: expected one mono waveform (T,), (1, T) or (1, 1, T); got {audio.shape}")
    audio = audio.reshape(-1)
    if sampling_rate != PESQ_RATE:
        audio = soxr.resample(audio, sampling_rate, PESQ_RATE)
    return audio


def pesq(reference: Audio, predicted: Audio, sampling_rate: int) -> float:
    """Wide-band PESQ, MOS-LQO in [1.04, 4.64] (higher is better; 4.64 for identical audio).

    Both waveforms are resampled to 16 kHz with soxr (VHQ) when ``sampling_rate`` differs, trimmed
    to the shorter, and scored by ``pesq.pesq(16000, ref, deg, "wb")`` (the ``pesq`` package, the
    ITU-T P.862 reference C code with the P.862.2 wide-band mapping), as BigVGAN's ``train.py``
    does after its own resampling to 16 kHz. At 16 kHz the value is the package's, bit for bit.

    Raises:
        ValueError: either waveform is all zeros, or the reference has no speech PESQ can detect (silence, pure noise) or is too
            short (PESQ needs about 0.25 s); the message carries the package's reason.
    """
    ref = _mono16k(reference, sampling_rate, "reference")
    deg = _mono16k(predicted, sampling_rate, "predicted")
    n = min(ref.shape[0], deg.shape[0])
    if not np.any(ref[:n]):
        raise ValueError("pesq: the reference is silent (all zeros); PESQ needs speech in the reference")
    if not np.any(deg[:n]):
        # The pesq package fails with a NaN conversion error on an all-zero degraded signal.
        raise ValueError("pesq: the prediction is silent (all zeros); PESQ is undefined for it")
    pesq_package = _pesq_package()
    try:
        return float(pesq_package.pesq(PESQ_RATE, ref[:n], deg[:n], "wb"))
    except pesq_package.PesqError as error:
        reason = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
        raise ValueError(
            f"pesq: {type(error).__name__}: {reason} ({n / PESQ_RATE:.2f} s at 16 kHz); PESQ needs "
            "speech-like audio of at least about 0.25 s"
        ) from error
