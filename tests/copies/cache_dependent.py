"""spec_to_mel_torch uses a filterbank only mel_spectrogram_torch stores: alone, it cannot run."""
import torch
from librosa.filters import mel as librosa_mel_fn

mel_basis = {}
hann_window = {}


def spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax):
    key = str(fmax) + "_" + str(spec.dtype)
    return torch.log(torch.clamp(torch.matmul(mel_basis[key], spec), min=1e-5))


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    key = str(fmax) + "_" + str(y.dtype)
    if key not in mel_basis:
        mel_basis[key] = torch.from_numpy(
            librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)).type_as(y)
        hann_window[key] = torch.hann_window(win_size).type_as(y)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=hann_window[key], center=center,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return spec_to_mel_torch(torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-6), n_fft, num_mels,
                             sampling_rate, fmin, fmax)
