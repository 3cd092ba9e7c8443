"""spectrogram_torch without the (unused) sampling_rate parameter."""
import torch

hann_window = {}


def spectrogram_torch(y, n_fft, hop_size, win_size, center=False):
    key = f"{win_size}_{y.dtype}_{y.device}"
    if key not in hann_window:
        hann_window[key] = torch.hann_window(win_size).to(dtype=y.dtype, device=y.device)
    half = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (half, half), mode="reflect").squeeze(1)
    spec = torch.stft(y, n_fft, hop_length=hop_size, win_length=win_size, window=hann_window[key], center=center,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = torch.view_as_real(spec)
    return torch.sqrt(spec.pow(2).sum(-1) + 1e-6)
