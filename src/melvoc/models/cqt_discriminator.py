"""Multi-scale sub-band constant-Q discriminator (CQT-D) of BigVGAN v2 (after Gu et al., 2024).

Each sub-discriminator up-samples the audio 2x, takes a complex constant-Q transform (9 octaves from
32.70 Hz, 24 / 36 / 48 bins per octave, hop 512 / 256 / 256), gives every octave its own input
convolution, and reads the concatenation with a dilated 2-D conv stack over ``(time, bins)``.

Why the CQT is computed here, in torch, instead of through a library: BigVGAN calls nnAudio's
``CQT2010v2``, and nnAudio's README says the project is no longer maintained; librosa's CQT is
NumPy (no autograd, no GPU); torchaudio has no CQT and is not installable everywhere melvoc runs.
The transform is small: Schoerkhuber & Klapuri's (2010) recursive scheme is one set of
time-domain kernels for the top octave, applied by a strided ``conv1d``, then a half-band low-pass
and a 2x decimation per lower octave. :class:`ConstantQTransform` reproduces ``CQT2010v2`` as
BigVGAN configures it (``output_format="Complex"``, ``pad_mode="constant"``, L1-normalised Hann
kernels, librosa-style ``sqrt(length)`` output scaling, early down-sampling), so the discriminators of
published BigVGAN checkpoints see the input they were trained on. The 2x up-sampling reproduces
``torchaudio.transforms.Resample``'s default (Hann-windowed sinc, 6 zero crossings, roll-off 0.99).
The filter designs use SciPy (``firwin2``, ``get_window``), already installed with librosa.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import signal
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from melvoc.models.base import DiscriminatorOutput, as_3d, conv_stack, run_discriminators
from melvoc.models.stft_discriminators import LRELU_SLOPE

__all__ = [
    "ConstantQTransform",
    "DiscriminatorCQT",
    "MultiScaleSubbandCQTDiscriminator",
    "SincResample",
]

#: nnAudio's default lowest bin (C1).
CQT_FMIN = 32.70
_LOWPASS_TAPS = 256


class SincResample(nn.Module):
    """Band-limited resampling by a rational factor, Hann-windowed sinc (torchaudio's default method).

    Args:
        orig_freq: input rate.
        new_freq: output rate.
        lowpass_filter_width: zero crossings of the sinc on each side.
        rolloff: cut-off as a fraction of the lower Nyquist frequency.

    ``forward``: ``(..., T) -> (..., ceil(T * new_freq / orig_freq))``.
    """

    def __init__(self, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> None:
        super().__init__()
        gcd = math.gcd(int(orig_freq), int(new_freq))
        self.orig = int(orig_freq) // gcd
        self.new = int(new_freq) // gcd
        base = min(self.orig, self.new) * rolloff
        self.width = math.ceil(lowpass_filter_width * self.orig / base)
        idx = torch.arange(-self.width, self.width + self.orig, dtype=torch.float64) / self.orig
        # Row j holds the taps that produce output phase j / new between two input samples.
        t = (torch.arange(0, -self.new, -1, dtype=torch.float64)[:, None] / self.new + idx[None, :]) * base
        t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        kernel = torch.sinc(t) * window * (base / self.orig)
        self.register_buffer("kernel", kernel.to(torch.float32).unsqueeze(1), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        shape = audio.shape
        x = audio.reshape(-1, 1, shape[-1])
        x = F.pad(x, (self.width, self.width + self.orig))
        y = F.conv1d(x, self.kernel.to(x.dtype), stride=self.orig)
        y = y.transpose(1, 2).reshape(x.size(0), -1)
        length = math.ceil(self.new * shape[-1] / self.orig)
        return y[..., :length].reshape(*shape[:-1], -1)


def _lowpass(band_edge: float, transition: float) -> Tensor:
    """nnAudio's decimation filter: ``firwin2`` with pass band ``edge / (1 + t)``, stop band ``edge * (1 + t)``."""
    taps = signal.firwin2(
        _LOWPASS_TAPS, [0.0, band_edge / (1 + transition), band_edge * (1 + transition), 1.0], [1.0, 1.0, 0.0, 0.0]
    )
    return torch.from_numpy(taps.astype(np.float32)).view(1, 1, -1)


def _decimate(x: Tensor, taps: Tensor, factor: int) -> Tensor:
    return F.conv1d(x, taps.to(x.dtype), stride=factor, padding=(taps.size(-1) - 1) // 2)


class ConstantQTransform(nn.Module):
    """Complex CQT by octave-wise decimation (nnAudio ``CQT2010v2`` as BigVGAN uses it).

    Args:
        sample_rate: input rate in Hz.
        hop_length: hop at the input rate; must be divisible by ``2 ** (octaves - 1)``.
        n_bins: number of bins, from ``fmin`` upwards.
        bins_per_octave: bins per octave.
        fmin: lowest bin in Hz.

    ``forward``: ``(B, 1, T) -> (B, 2, n_bins, frames)``, real and imaginary parts (the imaginary part
    is ``-<x, Im kernel>``: the transform correlates with the conjugate kernels), ``frames = T // hop + 1``.
    """

    def __init__(
        self, sample_rate: float, hop_length: int, n_bins: int, bins_per_octave: int, fmin: float = CQT_FMIN
    ) -> None:
        super().__init__()
        self.n_bins = int(n_bins)
        self.n_octaves = math.ceil(n_bins / bins_per_octave)
        n_filters = min(bins_per_octave, n_bins)
        q = 1.0 / (2 ** (1 / bins_per_octave) - 1)
        top_min = fmin * 2 ** (self.n_octaves - 1)
        remainder = n_bins % bins_per_octave
        top_max = top_min * 2 ** (((remainder or bins_per_octave) - 1) / bins_per_octave)
        top_min = top_max / 2 ** (1 - 1 / bins_per_octave)
        if top_max > sample_rate / 2:
            raise ValueError(
                f"CQT top bin {top_max:.0f} Hz is above the Nyquist frequency {sample_rate / 2:g} Hz: "
                "use fewer octaves or bins"
            )
        # Early down-sampling (librosa's rule): decimate first while the top octave stays below 0.85 Nyquist.
        cutoff = top_max * (1 + 0.5 * 1.5 / q)
        count = max(0, math.ceil(math.log2(0.85 * (sample_rate // 2) / cutoff)) - 2)
        count = min(count, max(0, math.ceil(math.log2(hop_length)) - self.n_octaves + 1))
        self.early_factor = 2**count
        hop_length //= self.early_factor
        sample_rate = sample_rate / self.early_factor
        if hop_length % 2 ** (self.n_octaves - 1):
            raise ValueError(
                f"CQT hop_length {hop_length * self.early_factor} must be divisible by 2 ** (octaves - 1) = "
                f"{2 ** (self.n_octaves - 1) * self.early_factor} so that every octave has the same frames"
            )
        self.hop_length = hop_length
        if count:
            self.register_buffer("early_lowpass", _lowpass(1 / self.early_factor, 0.03), persistent=False)
        self.register_buffer("lowpass", _lowpass(0.5, 0.001), persistent=False)

        freqs = top_min * 2.0 ** (np.arange(n_filters) / bins_per_octave)
        lengths = np.ceil(q * sample_rate / freqs)
        self.n_fft = int(2 ** math.ceil(math.log2(lengths.max())))
        kernels = np.zeros((n_filters, self.n_fft), dtype=np.complex64)
        for k, (freq, length) in enumerate(zip(freqs, lengths)):
            n = int(length)
            # Centred in the FFT frame; odd lengths one sample further left (nnAudio's placement).
            start = math.ceil(self.n_fft / 2 - length / 2) - (n % 2)
            time = np.arange(-(n // 2) - (n % 2), n // 2)
            sig = signal.get_window("hann", n, fftbins=True) * np.exp(2j * np.pi * freq * time / sample_rate) / length
            kernels[k, start : start + n] = sig / np.abs(sig).sum()
        self.register_buffer("kernel_real", torch.from_numpy(kernels.real.copy()).unsqueeze(1), persistent=False)
        self.register_buffer("kernel_imag", torch.from_numpy(kernels.imag.copy()).unsqueeze(1), persistent=False)
        all_freqs = fmin * 2.0 ** (np.arange(self.n_bins) / bins_per_octave)
        # librosa's scaling: every bin times sqrt(its kernel length), after undoing the early decimation.
        scale = torch.from_numpy(np.ceil(q * sample_rate / all_freqs)).float().sqrt() * self.early_factor
        self.register_buffer("scale", scale.view(1, 1, -1, 1), persistent=False)

    def _octave(self, x: Tensor, hop: int) -> Tensor:
        x = F.pad(x, (self.n_fft // 2, self.n_fft // 2))
        real = F.conv1d(x, self.kernel_real.to(x.dtype), stride=hop)
        imag = -F.conv1d(x, self.kernel_imag.to(x.dtype), stride=hop)
        return torch.stack((real, imag), dim=1)

    def forward(self, audio: Tensor) -> Tensor:
        x = audio
        if self.early_factor > 1:
            x = _decimate(x, self.early_lowpass, self.early_factor)
        hop = self.hop_length
        octaves = [self._octave(x, hop)]
        for _ in range(self.n_octaves - 1):
            hop //= 2
            x = _decimate(x, self.lowpass, 2)
            octaves.append(self._octave(x, hop))
        cqt = torch.cat(octaves[::-1], dim=2)[:, :, -self.n_bins :]
        return cqt * self.scale.to(cqt.dtype)


def _padding(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)


class DiscriminatorCQT(nn.Module):
    """One CQT-D scale: 2x up-sampling, complex CQT, per-octave input convs, dilated 2-D conv stack.

    Args:
        sample_rate: audio rate in Hz (the CQT runs at twice this rate).
        hop_length: CQT hop at twice the rate.
        n_octaves: octaves from 32.70 Hz.
        bins_per_octave: CQT resolution.
        filters: width of the first conv; ``filters * filters_scale ** i`` after, capped at ``max_filters``.
        max_filters: cap on the widths.
        filters_scale: growth of the widths per layer.
        dilations: time dilation of each strided conv.
        normalize_volume: remove DC and peak-normalise to 0.8 first (BigVGAN's ``cqtd_normalize_volume``).
    """

    def __init__(
        self,
        sample_rate: int,
        hop_length: int = 512,
        n_octaves: int = 9,
        bins_per_octave: int = 24,
        filters: int = 32,
        max_filters: int = 1024,
        filters_scale: int = 1,
        dilations: Sequence[int] = (1, 2, 4),
        normalize_volume: bool = False,
    ) -> None:
        super().__init__()
        self.bins_per_octave = int(bins_per_octave)
        self.n_octaves = int(n_octaves)
        self.normalize_volume = bool(normalize_volume)
        self.resample = SincResample(int(sample_rate), 2 * int(sample_rate))
        n_bins = self.n_octaves * self.bins_per_octave
        self.cqt = ConstantQTransform(2 * sample_rate, int(hop_length), n_bins, self.bins_per_octave)
        kernel = (3, 9)
        # The input convs have no normalisation in BigVGAN; the published weights depend on that.
        self.conv_pres = nn.ModuleList(
            nn.Conv2d(2, 2, kernel, padding=_padding(kernel)) for _ in range(self.n_octaves)
        )
        width = int(filters)
        self.convs = nn.ModuleList([nn.Conv2d(2, width, kernel, padding=_padding(kernel))])
        for i, d in enumerate(dilations):
            out = min(int(filters) * int(filters_scale) ** (i + 1), int(max_filters))
            self.convs.append(
                weight_norm(
                    nn.Conv2d(
                        width, out, kernel, stride=(1, 2), dilation=(int(d), 1), padding=_padding(kernel, (int(d), 1))
                    )
                )
            )
            width = out
        out = min(int(filters) * int(filters_scale) ** (len(dilations) + 1), int(max_filters))
        self.convs.append(weight_norm(nn.Conv2d(width, out, (3, 3), padding=(1, 1))))
        self.conv_post = weight_norm(nn.Conv2d(out, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, 1, T) -> (logits (B, N), feature maps)``; the output conv is not a feature map (as in BigVGAN)."""
        x = as_3d(audio)
        if self.normalize_volume:
            x = x - x.mean(dim=-1, keepdim=True)
            x = 0.8 * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self.cqt(self.resample(x.float())).to(x.dtype)
        z = z.transpose(2, 3)
        b = self.bins_per_octave
        z = torch.cat([conv(z[..., i * b : (i + 1) * b]) for i, conv in enumerate(self.conv_pres)], dim=-1)
        return conv_stack(z, self.convs, self.conv_post, slope=LRELU_SLOPE, output_is_feature_map=False)


class MultiScaleSubbandCQTDiscriminator(nn.Module):
    """One :class:`DiscriminatorCQT` per ``(hop_length, n_octaves, bins_per_octave)``.

    Args:
        sample_rate: audio rate in Hz.
        hop_lengths, n_octaves, bins_per_octaves: one value per scale (BigVGAN v2: 512/256/256, 9/9/9, 24/36/48).
        filters, max_filters, filters_scale, dilations, normalize_volume: as :class:`DiscriminatorCQT`
            (BigVGAN v2 configs: 128, 1024, 1, [1, 2, 4], false).
    """

    def __init__(
        self,
        sample_rate: int,
        hop_lengths: Sequence[int] = (512, 256, 256),
        n_octaves: Sequence[int] = (9, 9, 9),
        bins_per_octaves: Sequence[int] = (24, 36, 48),
        filters: int = 32,
        max_filters: int = 1024,
        filters_scale: int = 1,
        dilations: Sequence[int] = (1, 2, 4),
        normalize_volume: bool = False,
    ) -> None:
        super().__init__()
        if not (len(hop_lengths) == len(n_octaves) == len(bins_per_octaves)) or not hop_lengths:
            raise ValueError(
                f"CQT-D hop_lengths {list(hop_lengths)}, n_octaves {list(n_octaves)} and bins_per_octaves "
                f"{list(bins_per_octaves)}: need one value per scale in each, and at least one scale"
            )
        self.discriminators = nn.ModuleList(
            DiscriminatorCQT(
                int(sample_rate), int(h), int(o), int(b),
                filters, max_filters, filters_scale, dilations, normalize_volume,
            )
            for h, o, b in zip(hop_lengths, n_octaves, bins_per_octaves)
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        """``(B, 1, T) -> ([logits (B, N_i)], [[feature maps]])``, one entry per scale."""
        return run_discriminators(self.discriminators, audio)
