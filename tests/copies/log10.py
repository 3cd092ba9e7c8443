"""CoMoSVC-style mel_spectrogram: log10, magnitude eps 1e-9, and `sample_rate` for the rate."""
import torch
from librosa.filters import mel as librosa_mel_fn

_cache = {}


def mel_spectrogram(y, n_fft, num_mels, sample_rate, hop_size, win_size, fmin, fmax, center=False):
    key = (n_fft, num_mels, sample_rate, fmin, fmax, win_size, y.dtype)
    if key not in _cache:
        basis = librosa_mel_fn(sr=sample_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
        _cache[key] = (torch.from_numpy(basis).to(y), torch.hann_window(win_size).to(y))
    basis, window = _cache[key]
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=window, center=center,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    return torch.log10(torch.clamp(torch.matmul(basis, spec), min=1e-5))
