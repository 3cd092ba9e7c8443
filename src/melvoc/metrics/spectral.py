"""Spectral distances: BigVGAN's M-STFT and the mel-cepstral distortion (MCD)."""

from __future__ import annotations

import functools
from typing import Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["MSTFT_RESOLUTIONS", "mstft", "mcd", "mcep_params", "mel_cepstrum"]

Audio = Union[np.ndarray, Tensor]

#: (n_fft, hop, window) of auraloss's ``MultiResolutionSTFTLoss()`` defaults, which BigVGAN's
#: ``train.py`` validation uses for its M-STFT.
MSTFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
_MSTFT_EPS = 1e-8

# ESPnet's evaluate_mcd.py (egs2/TEMPLATE/*/pyscripts/utils/evaluate_mcd.py): frames and
# (order, all-pass constant) per rate.
_MCD_FFT = 1024
_MCD_HOP = 256
_MCEP_PARAMS = {16000: (23, 0.42), 22050: (34, 0.45), 24000: (34, 0.46), 44100: (39, 0.53), 48000: (39, 0.55)}
_MCD_EPS = 1e-8


def _mono(audio: Audio, name: str) -> Tensor:
    tensor = audio if isinstance(audio, Tensor) else torch.from_numpy(np.asarray(audio))
    if tensor.numel() != max(tensor.shape, default=0):
        raise ValueError(f"{name}: expected one mono waveform (T,), (1, T) or (1, 1, T); got {tuple(tensor.shape)}")
    return tensor.reshape(-1)


def _pair(reference: Audio, predicted: Audio) -> tuple[Tensor, Tensor]:
    ref, pred = _mono(reference, "reference"), _mono(predicted, "predicted")
    n = min(ref.shape[0], pred.shape[0])
    return ref[:n], pred[:n]


def mstft(reference: Audio, predicted: Audio, sampling_rate: int | None = None) -> float:
    """Multi-resolution STFT distance, BigVGAN's M-STFT (lower is better, 0 for identical audio).

    Definition (auraloss ``MultiResolutionSTFTLoss()`` with its defaults, called by BigVGAN's
    ``train.py`` as ``loss_mrstft(y_g_hat, y)``): for each (n_fft, hop, window) in
    :data:`MSTFT_RESOLUTIONS`, STFT magnitudes ``|X| = sqrt(max(re^2 + im^2, 1e-8))`` of the
    prediction (X) and reference (Y) (periodic Hann window centred in n_fft, ``center=True``,
    reflect padding) give spectral convergence ``||Y - X||_F / ||Y||_F`` plus the mean absolute
    log-magnitude difference ``mean|log X - log Y|``; M-STFT is the mean of the three sums.
    Resolutions are in samples at any rate, as BigVGAN uses them. Computed in float32 on the
    input's device, as auraloss does; agrees with auraloss 0.4 to float32 rounding (tests).

    Args:
        reference, predicted: mono waveforms ``(T,)`` (trimmed to the shorter).
        sampling_rate: unused (the resolutions are in samples); accepted for a uniform signature.
    """
    del sampling_rate
    ref, pred = _pair(reference, predicted)
    ref, pred = ref.float(), pred.float()
    total = torch.zeros((), dtype=torch.float32, device=ref.device)
    for n_fft, hop, window in MSTFT_RESOLUTIONS:
        win = torch.hann_window(window, device=ref.device)
        mags = []
        for signal in (pred, ref):
            spec = torch.stft(signal[None], n_fft, hop, window, win, return_complex=True)
            mags.append(torch.sqrt(torch.clamp(spec.real**2 + spec.imag**2, min=_MSTFT_EPS)))
        x, y = mags
        total = total + torch.linalg.norm(y - x) / torch.linalg.norm(y)
        total = total + (torch.log(x) - torch.log(y)).abs().mean()
    return float(total / len(MSTFT_RESOLUTIONS))


def mcep_params(sampling_rate: int) -> tuple[int, float]:
    """(mel-cepstrum order, all-pass constant alpha) for a rate: ESPnet's table, else the nearest
    table rate's order and the alpha whose warping best fits the mel scale (pysptk's ``mcepalpha``)."""
    if sampling_rate in _MCEP_PARAMS:
        return _MCEP_PARAMS[sampling_rate]
    nearest = min(_MCEP_PARAMS, key=lambda rate: abs(rate - sampling_rate))
    return _MCEP_PARAMS[nearest][0], _mcep_alpha(sampling_rate)


def _mcep_alpha(sampling_rate: int) -> float:
    omega = np.linspace(0.0, np.pi, 1000)
    mel = 1000.0 / np.log(2.0) * np.log(1.0 + omega * sampling_rate / (2 * np.pi) / 1000.0)
    mel /= mel[-1]
    best, best_error = 0.0, np.inf
    for alpha in np.arange(0.0, 1.0, 0.001):
        warped = omega + 2 * np.arctan(alpha * np.sin(omega) / (1 - alpha * np.cos(omega)))
        error = np.sqrt(np.mean((warped / np.pi - mel) ** 2))
        if error < best_error:
            best, best_error = float(alpha), error
    return round(best, 3)


@functools.lru_cache(maxsize=8)
def _freqt_matrix(length: int, order: int, alpha: float) -> np.ndarray:
    """SPTK's ``freqt`` (cepstrum of ``length`` coefficients -> ``order + 1`` warped ones) as a matrix.

    freqt is linear in its input, so running its recursion on all unit vectors at once gives the
    ``(length, order + 1)`` matrix that maps any cepstrum to its mel-cepstrum.
    """
    beta = 1.0 - alpha * alpha
    basis = np.eye(length)
    out = np.zeros((length, order + 1))
    for i in range(length - 1, -1, -1):
        prev = out.copy()
        out[:, 0] = basis[:, i] + alpha * prev[:, 0]
        if order >= 1:
            out[:, 1] = beta * prev[:, 0] + alpha * prev[:, 1]
        for m in range(2, order + 1):
            out[:, m] = prev[:, m - 1] + alpha * (prev[:, m] - out[:, m - 1])
    return out


def mel_cepstrum(audio: Audio, sampling_rate: int) -> np.ndarray:
    """Frame-wise mel-cepstrum ``(frames, order + 1)`` used by :func:`mcd` (float64).

    Frames of 1024 samples every 256, no padding (``1 + (T - 1024) // 256`` frames), Hamming window
    (symmetric, unit power); power periodogram ``P = |rfft|^2 + 1e-8``; pysptk's ``sp2mc``: real
    cepstrum ``c = irfft(log P)``, ``c[0] /= 2``, then SPTK's ``freqt(c, order, alpha)``.
    """
    signal = _mono(audio, "audio").detach().cpu().double().numpy()
    if signal.shape[0] < _MCD_FFT:
        raise ValueError(
            f"mcd: {signal.shape[0]} samples is shorter than one {_MCD_FFT}-sample analysis frame"
        )
    order, alpha = mcep_params(sampling_rate)
    frames = np.lib.stride_tricks.sliding_window_view(signal, _MCD_FFT)[::_MCD_HOP]
    window = np.hamming(_MCD_FFT)
    window /= np.sqrt(np.sum(window**2))
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + _MCD_EPS
    cepstrum = np.fft.irfft(np.log(power), n=_MCD_FFT, axis=-1)
    cepstrum[:, 0] /= 2.0
    return cepstrum @ _freqt_matrix(_MCD_FFT, order, alpha)


def mcd(reference: Audio, predicted: Audio, sampling_rate: int) -> float:
    """Mel-cepstral distortion in dB (lower is better, 0 for identical audio).

    ``MCD = mean_t 10 / ln(10) * sqrt(2 * sum_{d=1..D} (mc_ref[t, d] - mc_pred[t, d])^2)`` (Kubichek,
    1993), c0 (energy) excluded, frames paired one to one (a vocoder's output is time-aligned with
    its reference, so no DTW). Mel-cepstra from :func:`mel_cepstrum`: ESPnet's ``evaluate_mcd.py``
    framing (1024 / 256) and (order D, alpha) per rate (16 kHz: 23, 0.42; 22.05 kHz: 34, 0.45;
    24 kHz: 34, 0.46; 44.1 kHz: 39, 0.53; 48 kHz: 39, 0.55), with pysptk's ``sp2mc`` of the
    windowed periodogram in place of ESPnet's iterative ``mcep`` / WORLD envelope. Values are
    therefore comparable across melvoc runs, not digit for digit with papers that use WORLD.

    Args:
        reference, predicted: mono waveforms ``(T,)`` at ``sampling_rate`` (trimmed to the shorter).
        sampling_rate: Hz; picks the order and alpha.
    """
    ref, pred = _pair(reference, predicted)
    diff = mel_cepstrum(ref, sampling_rate)[:, 1:] - mel_cepstrum(pred, sampling_rate)[:, 1:]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff**2, axis=-1))))
