"""A mel no MelConfig expresses: the power spectrum (not the magnitude) through an htk filterbank."""
import torch
from librosa.filters import mel as librosa_mel_fn


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    basis = torch.from_numpy(librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax,
                                            htk=True, norm=None)).to(y)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=torch.hann_window(win_size).to(y),
                      center=center, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    power = torch.view_as_real(spec).pow(2).sum(-1) + 1e-6
    return torch.log(torch.clamp(torch.matmul(basis, power), min=1e-5))
