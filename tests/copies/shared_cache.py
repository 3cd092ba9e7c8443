"""One filterbank cache keyed by fmax alone (no dtype, no n_mels), shared by two functions.

Run one after the other in one module, the second dtype or the second function gets the first one's
filterbank: a float32 basis in a float64 matmul, or 80 bands where 64 were asked.
"""
import torch
from librosa.filters import mel as librosa_mel_fn

mel_basis = {}
hann_window = {}


def spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center=False):
    if win_size not in hann_window:
        hann_window[win_size] = torch.hann_window(win_size).type_as(y)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=hann_window[win_size],
                      center=center, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-6)


def spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax):
    if str(fmax) not in mel_basis:
        mel_basis[str(fmax)] = torch.from_numpy(
            librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)).type_as(spec)
    return torch.log(torch.clamp(torch.matmul(mel_basis[str(fmax)], spec), min=1e-5))


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    return spec_to_mel_torch(spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center),
                             n_fft, num_mels, sampling_rate, fmin, fmax)


def mel_spectrogram_64(y, n_fft, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    return mel_spectrogram_torch(y, n_fft, 64, sampling_rate, hop_size, win_size, fmin, fmax, center)
