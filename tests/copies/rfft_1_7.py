"""Written for torch < 1.8 and librosa < 0.10: torch.rfft on frames (removed in 1.8), positional filterbank arguments."""
import torch
from librosa.filters import mel as librosa_mel_fn

mel_basis = {}


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    if str(fmax) not in mel_basis:
        mel_basis[str(fmax)] = torch.from_numpy(librosa_mel_fn(sampling_rate, n_fft, num_mels, fmin, fmax)).type_as(y)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    frames = y.unfold(-1, n_fft, hop_size) * torch.hann_window(win_size).type_as(y)
    spec = torch.rfft(frames, 1).transpose(1, 2)
    spec = torch.sqrt(spec.pow(2).sum(-1) + 1e-6)
    return torch.log(torch.clamp(torch.matmul(mel_basis[str(fmax)], spec), min=1e-5))
