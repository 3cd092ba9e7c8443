"""The magnitude epsilon of GPT-SoVITS-style copies: 1e-8 under the square root."""
import torch
from librosa.filters import mel as librosa_mel_fn

mel_basis = {}
hann_window = {}


def _magnitude(y, n_fft, hop_size, win_size, center):
    key = str(win_size) + str(y.dtype) + str(y.device)
    if key not in hann_window:
        hann_window[key] = torch.hann_window(win_size).to(dtype=y.dtype, device=y.device)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=hann_window[key], center=center,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-8)


def spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center=False):
    return _magnitude(y, n_fft, hop_size, win_size, center)


def spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax):
    key = f"{n_fft}_{num_mels}_{sampling_rate}_{fmin}_{fmax}_{spec.dtype}"
    if key not in mel_basis:
        mel_basis[key] = torch.from_numpy(
            librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)).to(spec)
    return torch.log(torch.clamp(mel_basis[key] @ spec, min=1e-5))


def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):
    return spec_to_mel_torch(_magnitude(y, n_fft, hop_size, win_size, center), n_fft, num_mels, sampling_rate, fmin, fmax)
