"""Spectrogram discriminators: multi-resolution (MRD; UnivNet, BigVGAN v1) and multi-band (MBD; DAC, BigVGAN v2).

Both map audio ``(B, 1, T)`` (or ``(B, T)``) to ``(logits, feature maps)``: one ``(B, N)`` logits
tensor and one list of feature maps per sub-discriminator, like
:class:`melvoc.models.discriminators.MultiPeriodDiscriminator`.

* MRD: per resolution ``(n_fft, hop, win)``, the STFT magnitude of the reflect-padded audio
  (``(n_fft - hop) / 2`` on both sides, ``center=False``, rectangular window as BigVGAN's
  ``torch.stft`` call without a window) is read by a 2-D conv stack over ``(freq, time)``.
* MBD: per FFT size, the complex STFT (Hann window, hop ``n_fft / 4``, centred) of the DC-removed,
  peak-normalised audio is split into five frequency bands; each band has its own conv stack over
  ``(real/imag, time, freq)``, and one output conv reads the bands concatenated along frequency.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from melvoc.models.base import DiscriminatorOutput, as_3d, conv_stack, run_discriminators

__all__ = [
    "DiscriminatorB",
    "DiscriminatorR",
    "MultiBandDiscriminator",
    "MultiResolutionDiscriminator",
]

LRELU_SLOPE = 0.1
#: UnivNet's resolutions ``(n_fft, hop, win)``, used by BigVGAN v1.
UNIVNET_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
#: DAC's bands, as fractions of the ``n_fft // 2 + 1`` bins.
DAC_BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def _stack(in_channels: int, channels: int, norm=weight_norm) -> nn.ModuleList:
    """The 2-D stack shared by MRD and MBD: a (3, 9) conv, three (3, 9) convs striding time by 2, a (3, 3) conv."""
    return nn.ModuleList(
        [
            norm(nn.Conv2d(in_channels, channels, (3, 9), padding=(1, 4))),
            norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ]
    )


class DiscriminatorR(nn.Module):
    """One MRD resolution: STFT magnitude ``(B, 1, n_fft/2+1, frames)`` -> 2-D conv stack.

    Args:
        resolution: ``(n_fft, hop_length, win_length)``.
        channels: width of every conv (BigVGAN: ``32 * discriminator_channel_mult``).
        use_spectral_norm: spectral instead of weight normalisation.
    """

    def __init__(self, resolution: Sequence[int], channels: int = 32, use_spectral_norm: bool = False) -> None:
        super().__init__()
        if len(resolution) != 3:
            raise ValueError(f"MRD resolution {list(resolution)}: expected [n_fft, hop_length, win_length]")
        n_fft, hop, win = (int(v) for v in resolution)
        if not (0 < hop <= n_fft and 0 < win <= n_fft):
            raise ValueError(f"MRD resolution {[n_fft, hop, win]}: need 0 < hop_length, win_length <= n_fft")
        self.resolution = (n_fft, hop, win)
        norm = spectral_norm if use_spectral_norm else weight_norm
        self.convs = _stack(1, int(channels), norm)
        self.conv_post = norm(nn.Conv2d(int(channels), 1, (3, 3), padding=(1, 1)))
        # BigVGAN calls torch.stft without a window, i.e. a rectangular one of win_length.
        self.register_buffer("window", torch.ones(win), persistent=False)

    def spectrogram(self, audio: Tensor) -> Tensor:
        """``(B, 1, T) -> (B, n_fft // 2 + 1, frames)`` STFT magnitude, computed in float32."""
        n_fft, hop, win = self.resolution
        pad = (n_fft - hop) // 2
        x = F.pad(audio, (pad, pad), mode="reflect").squeeze(1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(
                x.float(), n_fft, hop_length=hop, win_length=win, window=self.window.float(), center=False,
                return_complex=True,
            )
        # The convolutions run in the input's dtype (bf16 weights in true half precision).
        return spec.abs().to(audio.dtype)

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, 1, T) -> (logits (B, N), feature maps)``."""
        x = self.spectrogram(as_3d(audio)).unsqueeze(1)
        return conv_stack(x, self.convs, self.conv_post, slope=LRELU_SLOPE)


class MultiResolutionDiscriminator(nn.Module):
    """One :class:`DiscriminatorR` per STFT resolution (default UnivNet's, as in BigVGAN v1).

    Args:
        resolutions: ``[[n_fft, hop_length, win_length], ...]``.
        channels: conv width of every resolution.
        use_spectral_norm: spectral instead of weight normalisation.
    """

    def __init__(
        self,
        resolutions: Sequence[Sequence[int]] = UNIVNET_RESOLUTIONS,
        channels: int = 32,
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if not resolutions:
            raise ValueError("MRD resolutions is empty: give at least one [n_fft, hop_length, win_length]")
        self.discriminators = nn.ModuleList(DiscriminatorR(r, channels, use_spectral_norm) for r in resolutions)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """``(B, 1, T) -> ([logits (B, N_i)], [[feature maps]])``, one entry per resolution."""
        return run_discriminators(self.discriminators, audio)


class DiscriminatorB(nn.Module):
    """One MBD FFT size: complex STFT ``(B, 2, frames, bins)`` split into bands, a conv stack per band.

    Args:
        window_length: FFT size and Hann window length; hop is ``int(window_length * hop_factor)``.
        channels: width of every conv.
        hop_factor: hop as a fraction of the window.
        bands: ``(low, high)`` fractions of the ``window_length // 2 + 1`` bins.
    """

    def __init__(
        self,
        window_length: int,
        channels: int = 32,
        hop_factor: float = 0.25,
        bands: Sequence[Sequence[float]] = DAC_BANDS,
    ) -> None:
        super().__init__()
        self.window_length = int(window_length)
        self.hop_length = int(self.window_length * hop_factor)
        if self.hop_length < 1:
            raise ValueError(f"MBD window_length {window_length} x hop_factor {hop_factor}: hop is below 1 sample")
        n_bins = self.window_length // 2 + 1
        self.bands = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in bands]
        if not self.bands or any(hi <= lo for lo, hi in self.bands):
            raise ValueError(f"MBD bands {[list(b) for b in bands]} with {n_bins} bins: every band must be non-empty")
        self.band_convs = nn.ModuleList(_stack(2, int(channels)) for _ in self.bands)
        self.conv_post = weight_norm(nn.Conv2d(int(channels), 1, (3, 3), padding=(1, 1)))
        self.register_buffer("window", torch.hann_window(self.window_length), persistent=False)

    def spectrogram(self, audio: Tensor) -> list[Tensor]:
        """``(B, 1, T)`` -> one ``(B, 2, frames, band_bins)`` real/imag tensor per band."""
        x = audio.squeeze(1)
        x = x - x.mean(dim=-1, keepdim=True)
        x = 0.8 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(
                x.float(),
                self.window_length,
                hop_length=self.hop_length,
                window=self.window.float(),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
        spec = torch.view_as_real(spec).permute(0, 3, 2, 1).to(audio.dtype)
        return [spec[..., lo:hi] for lo, hi in self.bands]

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, 1, T) -> (logits (B, N), feature maps)``; each band's first conv is no feature map (as in DAC)."""
        fmap, outs = [], []
        for band, stack in zip(self.spectrogram(as_3d(audio)), self.band_convs):
            for i, conv in enumerate(stack):
                band = F.leaky_relu(conv(band), LRELU_SLOPE)
                if i > 0:
                    fmap.append(band)
            outs.append(band)
        x = self.conv_post(torch.cat(outs, dim=-1))
        fmap.append(x)
        return x.flatten(1), fmap


class MultiBandDiscriminator(nn.Module):
    """One :class:`DiscriminatorB` per FFT size (BigVGAN v2's option: 2048, 1024, 512).

    Args:
        fft_sizes: window lengths.
        channels: conv width.
    """

    def __init__(self, fft_sizes: Sequence[int] = (2048, 1024, 512), channels: int = 32) -> None:
        super().__init__()
        if not fft_sizes:
            raise ValueError("MBD fft_sizes is empty: give at least one window length (BigVGAN: 2048, 1024, 512)")
        self.discriminators = nn.ModuleList(DiscriminatorB(int(w), channels) for w in fft_sizes)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """``(B, 1, T) -> ([logits (B, N_i)], [[feature maps]])``, one entry per FFT size."""
        return run_discriminators(self.discriminators, audio)
