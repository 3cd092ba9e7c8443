"""Vocos (Siuzdak, 2023): a ConvNeXt backbone at frame rate and an inverse-STFT head.

``mel (B, num_mels, F) -> backbone (B, F, dim) -> Fourier coefficients (B, F, n_fft // 2 + 1) -> ISTFT``.
No layer upsamples: the network predicts, per frame, a magnitude ``exp(m)`` (clipped at 1e2) and a
phase ``p``, and the inverse STFT turns ``exp(m) * (cos p + i sin p)`` into ``hop_length`` samples.

The published ``charactr/vocos-mel-24khz``: 100 mels, dim 512, intermediate 1536, 8 layers,
n_fft 1024, hop 256, head padding ``same`` (the training recipe ``configs/vocos.yaml`` uses ``center``).

Parameter names follow gemelo-ai/vocos (``backbone.convnext.0.dwconv.weight``, ``head.out.weight``),
so its ``pytorch_model.bin`` maps onto :class:`VocosGenerator` key for key (see ``melvoc.peers.vocos``).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from melvoc.models.base import VocoderGenerator

__all__ = ["ConvNeXtBlock", "ISTFT", "ISTFTHead", "VocosBackbone", "VocosGenerator"]

Padding = Literal["center", "same"]
_PADDINGS = ("center", "same")
# Vocos' ISTFT refuses window envelopes at or below this (its NOLA check).
_NOLA_TOLERANCE = 1e-11


class ISTFT(nn.Module):
    """Inverse STFT by overlap-add with a periodic Hann window of ``n_fft`` samples.

    ``padding`` says where the analysis frames sat: ``"center"`` (``torch.stft(center=True)``, frame
    ``f`` centred on sample ``f * hop``) or ``"same"`` (Vocos' "same" padding, ``(n_fft - hop) // 2``
    samples on each side, as for a CNN). Either way ``F`` frames give exactly ``F * hop_length`` samples:

    - ``same``: what Vocos' own ``ISTFT`` returns.
    - ``center``: ``torch.istft(..., center=True, length=F * hop_length)``; Vocos returns the first
      ``(F - 1) * hop_length`` of these samples (``torch.istft`` without ``length``).

    Hand-written because ``torch.istft`` rejects "same" padding (its NOLA check covers the edges that
    are cut away anyway) and does not export to ONNX: ``irfft`` per frame, window, overlap-add as
    ``ceil(n_fft / hop)`` shifted sums of ``hop``-sample blocks (pad and add, no scatter), then
    division by the overlap-added squared window.

    :meth:`use_dft_matmul` switches the per-frame ``irfft`` for a matrix product with the windowed
    inverse-DFT basis (``2 * (n_fft // 2 + 1) * n_fft`` multiply-adds per frame, about 8 % of the
    published model's), the form ONNX exporters accept (they reject complex tensors); a test keeps the
    two equal.

    Args:
        n_fft: FFT size and window length.
        hop_length: samples between frames.
        padding: ``"center"`` or ``"same"``.
    """

    window: Tensor
    cos_basis: Optional[Tensor]
    sin_basis: Optional[Tensor]

    def __init__(self, n_fft: int, hop_length: int, padding: Padding = "same") -> None:
        super().__init__()
        if padding not in _PADDINGS:
            raise ValueError(f"ISTFT padding={padding!r}: must be one of {_PADDINGS}")
        if not 0 < hop_length <= n_fft:
            raise ValueError(f"ISTFT hop_length={hop_length}: must be in [1, n_fft={n_fft}]")
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.padding = padding
        self.pad = self.n_fft // 2 if padding == "center" else (self.n_fft - self.hop_length) // 2
        self.blocks = -(-self.n_fft // self.hop_length)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("cos_basis", None, persistent=False)
        self.register_buffer("sin_basis", None, persistent=False)
        window = torch.hann_window(self.n_fft, device="cpu")
        # Beyond 2 * blocks frames the envelope only repeats its interior period between the same two
        # edges, so these lengths cover every input; checking here keeps the forward free of host reads.
        for frames in range(1, 2 * self.blocks + 2):
            lowest = self._envelope(frames, window).min().item()
            if lowest <= _NOLA_TOLERANCE:
                raise ValueError(
                    f"ISTFT n_fft={n_fft}, hop_length={hop_length}, padding={padding!r}: the Hann windows "
                    f"do not overlap enough to invert ({frames} frames leave a window sum of {lowest:.3g}); "
                    "use hop_length <= n_fft // 2"
                )

    @property
    def dft_matmul(self) -> bool:
        """Whether frames come from the inverse-DFT matrix product instead of ``irfft``."""
        return self.cos_basis is not None

    def use_dft_matmul(self, enabled: bool = True) -> "ISTFT":
        """Compute frames by a matrix product with the windowed inverse-DFT basis (``enabled``) or by
        ``irfft`` (the default). The basis (``2 * (n_fft // 2 + 1) * n_fft`` values) lives on the
        window's device and dtype. Returns ``self``."""
        if not enabled:
            self.cos_basis = self.sin_basis = None
            return self
        n, bins = self.n_fft, self.n_fft // 2 + 1
        k = torch.arange(bins, dtype=torch.int64, device=self.window.device)
        # (k * t) mod n in integers keeps the angles exact for every n_fft.
        angle = (k[:, None] * torch.arange(n, device=k.device)[None, :] % n).double() * (2 * math.pi / n)
        weight = torch.full((bins, 1), 2.0 / n, dtype=torch.float64, device=k.device)
        weight[0] = 1.0 / n
        sine = torch.sin(angle)
        sine[0] = 0.0
        if n % 2 == 0:
            weight[-1] = 1.0 / n
            sine[-1] = 0.0  # irfft ignores the imaginary parts of DC and Nyquist
        window = self.window.double()
        self.cos_basis = (weight * torch.cos(angle) * window).to(self.window.dtype)
        self.sin_basis = (-weight * sine * window).to(self.window.dtype)
        return self

    def _overlap_add(self, frames: Tensor) -> Tensor:
        """``(B, F, n_fft)`` frames -> ``(B, F * hop)`` trimmed overlap-added signal."""
        batch, count, _ = frames.shape
        hop, blocks = self.hop_length, self.blocks
        frames = F.pad(frames, (0, blocks * hop - self.n_fft)).reshape(batch, count, blocks, hop)
        signal = F.pad(frames[:, :, 0], (0, 0, 0, blocks - 1))
        for j in range(1, blocks):
            signal = signal + F.pad(frames[:, :, j], (0, 0, j, blocks - 1 - j))
        signal = signal.reshape(batch, (count + blocks - 1) * hop)
        return signal[:, self.pad : self.pad + count * hop]

    def _envelope(self, count: int, window: Tensor) -> Tensor:
        """Overlap-added squared window of ``count`` frames, trimmed: ``(F * hop,)``."""
        return self._overlap_add(window.square().expand(1, count, -1))[0]

    def forward(self, real: Tensor, imag: Tensor) -> Tensor:
        """One-sided spectra ``(B, F, n_fft // 2 + 1)`` (real and imaginary parts) -> audio ``(B, F * hop)``.

        The imaginary parts of the DC and Nyquist bins are ignored (``irfft``).
        """
        window = self.window.to(real.dtype)
        if self.cos_basis is not None and self.sin_basis is not None:
            frames = real @ self.cos_basis.to(real.dtype) + imag @ self.sin_basis.to(real.dtype)
        else:
            frames = torch.fft.irfft(torch.complex(real, imag), n=self.n_fft, dim=-1) * window
        return self._overlap_add(frames) / self._envelope(frames.shape[1], window)

    def extra_repr(self) -> str:
        return (
            f"n_fft={self.n_fft}, hop_length={self.hop_length}, padding={self.padding!r}, "
            f"dft_matmul={self.dft_matmul}"
        )


class ISTFTHead(nn.Module):
    """Linear map to log-magnitude and phase, then :class:`ISTFT`. ``(B, F, dim) -> (B, F * hop)``.

    The output is float32 (float64 for float64 input), also under ``torch.autocast``.

    Args:
        dim: backbone width.
        n_fft: FFT size of the ISTFT; the linear layer predicts ``n_fft + 2`` values per frame
            (``n_fft // 2 + 1`` log-magnitudes, then as many phases).
        hop_length: samples per frame.
        padding: ``"center"`` or ``"same"`` (see :class:`ISTFT`).
    """

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: Padding = "same") -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length, padding)

    def forward(self, x: Tensor) -> Tensor:
        coefficients = self.out(x)
        # exp, the phase and the inverse FFT run in float32 at least, also under autocast: half precision
        # loses the phase, and the CPU FFT has no half or bfloat16 kernel.
        coefficients = coefficients.to(torch.promote_types(coefficients.dtype, torch.float32))
        with torch.autocast(coefficients.device.type, enabled=False):
            log_magnitude, phase = coefficients.chunk(2, dim=-1)
            # The clip guards against exp overflow early in training (Vocos' safeguard).
            magnitude = torch.exp(log_magnitude).clamp(max=1e2)
            return self.istft(magnitude * torch.cos(phase), magnitude * torch.sin(phase))


def _depthwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """Vocos' depthwise ``Conv1d`` applied to ``(B, F, C)`` frames, returning ``(B, F, C)``.

    The same convolution as 2-D over a channels-last view: the frame-major residual stream goes in and
    comes out without the two transposed copies a ``Conv1d`` on ``(B, C, F)`` needs (about 9 ms of
    copies against 0.15 ms of convolution per block at 10 s of audio on one CPU thread).
    """
    channels_last = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(channels_last, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups)
    return y.squeeze(2).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block in 1-D: ``x + gamma * W2 gelu(W1 LayerNorm(dwconv7(x)))`` on ``(B, F, dim)`` frames.

    Args:
        dim: channels.
        intermediate_dim: width of the pointwise MLP.
        layer_scale_init_value: initial value of the per-channel scale ``gamma``.
    """

    def __init__(self, dim: int, intermediate_dim: int, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(_depthwise(self.dwconv, x)))))
        return torch.addcmul(x, self.gamma, y)


class VocosBackbone(nn.Module):
    """Embedding conv (kernel 7), LayerNorm, ConvNeXt blocks, final LayerNorm. ``(B, C_in, F) -> (B, F, dim)``.

    Convolutions and linear layers start from a truncated normal (std 0.02) with zero bias, as in Vocos.
    """

    def __init__(
        self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int, layer_scale_init_value: float
    ) -> None:
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, layer_scale_init_value) for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(_trunc_normal_init)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.embed(x).transpose(1, 2))
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x)


def _trunc_normal_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


class VocosGenerator(VocoderGenerator):
    """Vocos: ``mel (B, num_mels, F) -> audio (B, 1, F * hop_length)``.

    Vocos itself returns ``(B, T)``; melvoc's generators all return ``(B, 1, T)``, so this one adds the
    channel axis. With ``padding="center"`` it also returns ``hop_length`` more samples than Vocos (see
    :class:`ISTFT`); the training module trims the output to the reference audio, which for
    ``center=True`` features is one hop shorter.

    The keyword names are those of Vocos' ``VocosBackbone`` and ``ISTFTHead`` config entries
    (``input_channels`` is ``num_mels``; the head's ``dim`` is the backbone's).

    Args:
        num_mels: input mel bands.
        dim: backbone width (published: 512).
        intermediate_dim: ConvNeXt MLP width (published: 1536).
        num_layers: ConvNeXt blocks (published: 8).
        n_fft: FFT size of the ISTFT head (published: 1024).
        hop_length: samples per mel frame; must equal the features' ``hop_size`` (published: 256).
        padding: ISTFT padding, ``"same"`` or ``"center"``.
        layer_scale_init_value: initial layer scale; ``None`` means ``1 / num_layers`` as in Vocos.
        adanorm_num_embeddings: Vocos' bandwidth-conditioned LayerNorm for EnCodec tokens; only
            ``None`` is supported (melvoc vocodes mels).
    """

    def __init__(
        self,
        num_mels: int = 100,
        dim: int = 512,
        intermediate_dim: int = 1536,
        num_layers: int = 8,
        n_fft: int = 1024,
        hop_length: int = 256,
        padding: Padding = "same",
        layer_scale_init_value: Optional[float] = None,
        adanorm_num_embeddings: Optional[int] = None,
    ) -> None:
        super().__init__()
        if adanorm_num_embeddings is not None:
            raise ValueError(
                f"VocosGenerator adanorm_num_embeddings={adanorm_num_embeddings}: the adaptive LayerNorm of "
                "EnCodec-conditioned Vocos is not supported; melvoc's Vocos takes mels (set it to null)"
            )
        for name, value in (("num_mels", num_mels), ("dim", dim), ("intermediate_dim", intermediate_dim)):
            if int(value) < 1:
                raise ValueError(f"VocosGenerator {name}={value}: must be >= 1")
        if int(num_layers) < 0:
            raise ValueError(f"VocosGenerator num_layers={num_layers}: must be >= 0")
        if layer_scale_init_value is None:
            layer_scale_init_value = 1.0 / max(int(num_layers), 1)
        if not layer_scale_init_value > 0:
            raise ValueError(
                f"VocosGenerator layer_scale_init_value={layer_scale_init_value}: must be > 0 "
                "(or null for 1 / num_layers)"
            )
        self.num_mels = int(num_mels)
        self.backbone = VocosBackbone(
            self.num_mels, int(dim), int(intermediate_dim), int(num_layers), float(layer_scale_init_value)
        )
        self.head = ISTFTHead(int(dim), int(n_fft), int(hop_length), padding)

    @property
    def hop_size(self) -> int:
        """Output samples per input frame, the head's ``hop_length``."""
        return self.head.istft.hop_length

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, num_mels, F) -> (B, 1, F * hop_size)``."""
        if mel.dim() != 3 or mel.shape[1] != self.num_mels:
            raise ValueError(
                f"VocosGenerator input of shape {tuple(mel.shape)}: expected (B, num_mels={self.num_mels}, frames)"
            )
        return self.head(self.backbone(mel)).unsqueeze(1)
