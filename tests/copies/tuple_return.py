"""mel_spectrogram_torch returning (mel, energy), as variance-adaptor recipes do."""
import torch
from librosa.filters import mel as librosa_mel_fn

state = {}


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    key = (n_fft, num_mels, sampling_rate, fmin, fmax, win_size, str(y.dtype))
    if key not in state:
        state[key] = (torch.from_numpy(librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin,
                                                      fmax=fmax)).to(y), torch.hann_window(win_size).to(y))
    basis, window = state[key]
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.view_as_real(torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=window,
                                         center=center, pad_mode="reflect", normalized=False, onesided=True,
                                         return_complex=True))
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-6)
    energy = torch.norm(magnitude, dim=1)
    return torch.log(torch.clamp(torch.matmul(basis, magnitude), min=1e-5)), energy
