"""Parameters in another order (sampling_rate first), and a wrapper taking a hyper-parameter object."""
import torch
from librosa.filters import mel as librosa_mel_fn

_bank = {}
_window = {}


def mel_spectrogram_torch(y, sampling_rate, n_fft, num_mels, hop_size, win_size, fmin, fmax, center=False):
    key = (sampling_rate, n_fft, num_mels, fmin, fmax, y.dtype, y.device)
    if key not in _bank:
        basis = librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
        _bank[key] = torch.from_numpy(basis).to(y)
    if (win_size, y.dtype) not in _window:
        _window[(win_size, y.dtype)] = torch.hann_window(win_size).to(y)
    pad = int((n_fft - hop_size) / 2)
    padded = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    stft = torch.stft(padded, n_fft, hop_length=hop_size, win_length=win_size, window=_window[(win_size, y.dtype)],
                      center=center, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    magnitude = torch.sqrt(stft.real ** 2 + stft.imag ** 2 + 1e-6)
    return torch.log(torch.clamp(torch.matmul(_bank[key], magnitude), min=1e-5))


def mel_spectrogram_data(audio, hps):
    return mel_spectrogram_torch(audio, hps.sampling_rate, hps.filter_length, hps.n_mel_channels, hps.hop_length,
                                 hps.win_length, hps.mel_fmin, hps.mel_fmax)
