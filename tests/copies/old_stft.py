"""Written for torch < 2.0 and librosa < 0.10: torch.stft without return_complex, positional filterbank arguments."""
import torch
from librosa.filters import mel as librosa_mel_fn

mel_basis = {}
hann_window = {}


def spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center=False):
    if str(win_size) not in hann_window:
        hann_window[str(win_size)] = torch.hann_window(win_size).type_as(y)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=hann_window[str(win_size)],
                      center=center, pad_mode="reflect", normalized=False, onesided=True)
    return torch.sqrt(spec.pow(2).sum(-1) + 1e-6)


def spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax):
    if str(fmax) not in mel_basis:
        mel_basis[str(fmax)] = torch.from_numpy(librosa_mel_fn(sampling_rate, n_fft, num_mels, fmin, fmax)).type_as(spec)
    return torch.log(torch.clamp(torch.matmul(mel_basis[str(fmax)], spec), min=1e-5))


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    return spec_to_mel_torch(spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center),
                             n_fft, num_mels, sampling_rate, fmin, fmax)
