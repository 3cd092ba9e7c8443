"""Log-mel features that reproduce the classic VITS / HiFi-GAN ``mel_processing.py`` functions.

The pipeline (default knobs, the VITS lineage)::

    audio (B, T) --reflect pad (n_fft - hop) // 2--> frames (B, F, n_fft) * hann(win_size)
        --rfft--> sqrt(re^2 + im^2 + eps) (B, F, n_fft // 2 + 1)
        --slaney mel filterbank--> ln(clamp(mel, clip_val)) (B, num_mels, F)

Two facts keep float64 results identical to the original: the Hann window and the librosa
filterbank are built in float32 and only then cast to the input dtype, and the pre-pad is
``int((n_fft - hop_size) / 2)`` (truncation for odd differences).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "MelConfig",
    "MelSpectrogram",
    "Spectrogram",
    "cache_info",
    "clear_cache",
    "hann_window",
    "mel_filterbank",
    "mel_spectrogram",
    "min_audio_length",
    "num_frames",
    "spec_to_mel",
    "spectrogram",
]

PadMode = Literal["reflect", "zeros", "none"]
_PAD_MODES = ("reflect", "zeros", "none")
_LOG_BASES = ("e", "10")
_MEL_SCALES = ("slaney", "htk")
_MEL_NORMS = ("slaney", None)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class MelConfig:
    """Parameters of a log-mel spectrogram, named as in the original ``mel_processing.py``.

    Args:
        sampling_rate: audio sample rate in Hz.
        n_fft: FFT size; the spectrogram has ``n_fft // 2 + 1`` bins.
        hop_size: samples between frames.
        win_size: Hann window length (``<= n_fft``; zero-padded to ``n_fft``, centred).
        num_mels: number of mel bands.
        fmin: lowest filterbank frequency in Hz.
        fmax: highest filterbank frequency in Hz; ``None`` means ``sampling_rate / 2``.
        center: ``torch.stft``'s ``center`` (an extra reflect pad of ``n_fft // 2``).
        eps: added under the square root of the magnitude, ``sqrt(re^2 + im^2 + eps)``
            (VITS 1e-6, HiFi-GAN/BigVGAN 1e-9, GPT-SoVITS 1e-8); 0 gives the plain ``|X|``.
        clip_val: floor of the log, ``log(clamp(mel, clip_val))``.
        pad_mode: padding of ``(n_fft - hop_size) // 2`` on both sides before the STFT:
            ``reflect`` (VITS/HiFi-GAN), ``zeros`` (NeMo exact_pad) or ``none`` (Vocos).
        log_base: ``"e"`` (natural log) or ``"10"``.
        mel_scale: ``"slaney"`` (librosa default) or ``"htk"`` (torchaudio default).
        mel_norm: ``"slaney"`` (area normalisation, librosa default) or ``None``.
    """

    sampling_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float = 0.0
    fmax: Optional[float] = None
    center: bool = False
    eps: float = 1e-6
    clip_val: float = 1e-5
    pad_mode: PadMode = "reflect"
    log_base: str = "e"
    mel_scale: str = "slaney"
    mel_norm: Optional[str] = "slaney"

    def __post_init__(self) -> None:
        for name in ("sampling_rate", "n_fft", "hop_size", "win_size", "num_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                if isinstance(value, float) and value.is_integer():
                    object.__setattr__(self, name, int(value))
                else:
                    raise ValueError(f"MelConfig.{name}={value!r}: must be a positive integer")
        if self.sampling_rate <= 0:
            raise ValueError(f"MelConfig.sampling_rate={self.sampling_rate}: must be > 0 Hz")
        if self.n_fft <= 0:
            raise ValueError(f"MelConfig.n_fft={self.n_fft}: must be > 0")
        if self.hop_size <= 0:
            raise ValueError(f"MelConfig.hop_size={self.hop_size}: must be > 0")
        if not 0 < self.win_size <= self.n_fft:
            raise ValueError(
                f"MelConfig.win_size={self.win_size}: must be in [1, n_fft={self.n_fft}]"
            )
        if self.num_mels < 1:
            raise ValueError(f"MelConfig.num_mels={self.num_mels}: must be >= 1")
        nyquist = self.sampling_rate / 2
        if self.fmin < 0:
            raise ValueError(f"MelConfig.fmin={self.fmin}: must be >= 0 Hz")
        if self.fmax is not None and not 0 < self.fmax <= nyquist:
            raise ValueError(
                f"MelConfig.fmax={self.fmax}: must be in (0, sampling_rate/2={nyquist:g}] Hz "
                "(or null for sampling_rate/2)"
            )
        if self.fmin >= self.f_max:
            raise ValueError(
                f"MelConfig.fmin={self.fmin}: must be below fmax={self.f_max:g} Hz"
            )
        if self.eps < 0:
            raise ValueError(f"MelConfig.eps={self.eps}: must be >= 0")
        if self.clip_val <= 0:
            raise ValueError(f"MelConfig.clip_val={self.clip_val}: must be > 0")
        if self.pad_mode not in _PAD_MODES:
            raise ValueError(f"MelConfig.pad_mode={self.pad_mode!r}: must be one of {_PAD_MODES}")
        if str(self.log_base) not in _LOG_BASES:
            raise ValueError(f"MelConfig.log_base={self.log_base!r}: must be one of {_LOG_BASES}")
        object.__setattr__(self, "log_base", str(self.log_base))
        if self.mel_scale not in _MEL_SCALES:
            raise ValueError(
                f"MelConfig.mel_scale={self.mel_scale!r}: must be one of {_MEL_SCALES}"
            )
        if self.mel_norm not in _MEL_NORMS:
            raise ValueError(f"MelConfig.mel_norm={self.mel_norm!r}: must be one of {_MEL_NORMS}")

    @property
    def f_max(self) -> float:
        """The effective upper filterbank frequency in Hz (``fmax`` or ``sampling_rate / 2``)."""
        return float(self.sampling_rate) / 2 if self.fmax is None else float(self.fmax)

    @property
    def n_freqs(self) -> int:
        """Number of STFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def pre_pad(self) -> int:
        """Samples padded on each side before the STFT (0 for ``pad_mode='none'``)."""
        return 0 if self.pad_mode == "none" else int((self.n_fft - self.hop_size) / 2)

    def replace(self, **changes: Any) -> "MelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for checkpoints and YAML)."""
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value: "MelConfig | Mapping[str, Any]") -> "MelConfig":
        """Accept a ``MelConfig`` or a mapping (dict, OmegaConf node; ``_target_`` is ignored)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping) or hasattr(value, "items"):
            fields = {f.name for f in dataclasses.fields(cls)}
            items = {str(k): v for k, v in value.items() if k != "_target_"}
            unknown = sorted(set(items) - fields)
            if unknown:
                raise ValueError(
                    f"unknown MelConfig field(s) {unknown}; allowed: {sorted(fields)}"
                )
            return cls(**items)
        raise TypeError(f"expected a MelConfig or a mapping of its fields, got {type(value).__name__}")


def min_audio_length(config: MelConfig) -> int:
    """Shortest audio (samples) that gives at least one frame and a valid reflect pad."""
    pad = config.pre_pad
    need = max(config.n_fft - 2 * pad - (2 * (config.n_fft // 2) if config.center else 0), 1)
    if config.pad_mode == "reflect":
        need = max(need, pad + 1)
    if config.center:
        # torch.stft's centring pad is a reflect pad of n_fft // 2 on the pre-padded signal.
        need = max(need, config.n_fft // 2 + 1 - 2 * pad)
    return need


def num_frames(num_samples: int, config: MelConfig) -> int:
    """Frames produced for ``num_samples`` of audio: ``1 + (padded - n_fft) // hop_size``."""
    padded = num_samples + 2 * config.pre_pad + (2 * (config.n_fft // 2) if config.center else 0)
    return 1 + (padded - config.n_fft) // config.hop_size


def hann_window(config: MelConfig) -> Tensor:
    """Periodic Hann window of ``win_size``, zero-padded (centred) to ``n_fft``. Shape ``(n_fft,)``, float32."""
    window = torch.hann_window(config.win_size, dtype=torch.float32)
    left = (config.n_fft - config.win_size) // 2
    if left or config.win_size != config.n_fft:
        window = nn.functional.pad(window, (left, config.n_fft - config.win_size - left))
    return window


def mel_filterbank(config: MelConfig) -> Tensor:
    """librosa's mel filterbank in float32. Shape ``(num_mels, n_fft // 2 + 1)``.

    Warns (naming the config) when some mel bands are empty, e.g. too many mels for ``n_fft``.
    """
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        basis = librosa.filters.mel(
            sr=config.sampling_rate,
            n_fft=config.n_fft,
            n_mels=config.num_mels,
            fmin=config.fmin,
            fmax=config.f_max,
            htk=config.mel_scale == "htk",
            norm=config.mel_norm,
            dtype=np.float32,
        )
    empty = np.flatnonzero(basis.max(axis=1) == 0)
    if empty.size:
        warnings.warn(
            f"{empty.size} of {config.num_mels} mel filters are empty (bands {empty[:8].tolist()}"
            f"{'...' if empty.size > 8 else ''}) for {config}: lower num_mels, raise n_fft, "
            "or widen fmin..fmax",
            UserWarning,
            stacklevel=2,
        )
    return torch.from_numpy(basis)


class _ConstantCache:
    """A small LRU of (window, filterbank, band, projection) per (config, dtype, device), for the functional API."""

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, tuple[Tensor, Tensor, slice, Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, config: MelConfig, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor, slice, Tensor]:
        key = (config, dtype, device)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        basis = mel_filterbank(config).to(device=device, dtype=dtype)
        band = _band(basis)
        value = (hann_window(config).to(device=device, dtype=dtype), basis, band, _projection(basis, band))
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_constants = _ConstantCache()


def cache_info() -> dict[str, int]:
    """Size and bound of the functional API's (window, filterbank) cache."""
    return {"size": len(_constants), "maxsize": _constants.maxsize}


def clear_cache() -> None:
    """Drop every cached window and filterbank (frees their device memory)."""
    _constants.clear()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _as_batch(audio: Tensor, config: MelConfig) -> tuple[Tensor, bool]:
    """``(T,)``, ``(B, T)`` or ``(B, 1, T)`` -> ``(B, T)`` in the compute dtype; flag: had a batch dim."""
    if audio.dim() == 1:
        batch, batched = audio.unsqueeze(0), False
    elif audio.dim() == 2:
        batch, batched = audio, True
    elif audio.dim() == 3 and audio.shape[1] == 1:
        batch, batched = audio.squeeze(1), True
    else:
        raise ValueError(
            f"audio of shape {tuple(audio.shape)}: expected (T,), (B, T) or (B, 1, T)"
        )
    if not batch.is_floating_point():
        raise ValueError(
            f"audio dtype {audio.dtype}: expected float samples in [-1, 1] "
            "(divide integer PCM by 32768)"
        )
    minimum = min_audio_length(config)
    if batch.shape[-1] < minimum:
        raise ValueError(
            f"audio of {batch.shape[-1]} samples is too short for n_fft={config.n_fft}, "
            f"hop_size={config.hop_size}, pad_mode={config.pad_mode!r}: need at least {minimum} samples"
        )
    return batch.to(_compute_dtype(batch.dtype)), batched


def _reflect(batch: Tensor, pad: int) -> Tensor:
    """``F.pad(..., mode="reflect")`` on ``(B, T)``; a flip-and-concatenate is ~4x faster on CPU."""
    return torch.cat([batch[:, 1 : pad + 1].flip(-1), batch, batch[:, -pad - 1 : -1].flip(-1)], dim=-1)


def _pad(batch: Tensor, config: MelConfig) -> Tensor:
    pad = config.pre_pad
    if pad:
        if config.pad_mode == "reflect":
            batch = _reflect(batch, pad)
        else:
            batch = nn.functional.pad(batch, (pad, pad))
    if config.center:
        batch = _reflect(batch, config.n_fft // 2)
    return batch


def _power_to_magnitude(spectrum: Tensor, eps: float, overwrite: bool = False) -> Tensor:
    """``sqrt(re^2 + im^2 + eps)`` (``|X|`` for ``eps == 0``) of ``(B, F, bins)`` -> ``(bins, B, F)``; no autograd.

    The bins-major result is what the filterbank GEMM wants, written there directly (no transpose
    copy). ``overwrite``: square ``spectrum`` in place (saves an allocation when it is not needed after).
    """
    batch, frames, bins = spectrum.shape
    out = torch.empty(bins, batch, frames, dtype=spectrum.real.dtype, device=spectrum.device)
    target = out.permute(1, 2, 0)
    if eps == 0:
        torch.abs(spectrum, out=target)
        return out
    # re*re + im*im on the real view, then one add: bit-identical to view_as_real(X).pow(2).sum(-1),
    # and several times faster (a reduction over a size-2 dim is slow).
    parts = torch.view_as_real(spectrum)
    parts = parts.mul_(parts) if overwrite else parts * parts
    real, imag = parts.unbind(-1)
    torch.add(real, imag, out=target)
    return out.add_(eps).sqrt_()


def _overlap_add(frames: Tensor, hop: int, length: int) -> Tensor:
    """Adjoint of ``x.unfold(-1, n_fft, hop)``: ``(B, F, n_fft) -> (B, length)``."""
    batch, count, n_fft = frames.shape
    if n_fft % hop:
        return torch.ops.aten.unfold_backward(frames, [batch, length], -1, n_fft, hop)
    shifts = n_fft // hop
    out = frames.new_zeros(batch, count + shifts - 1, hop)
    chunks = frames.view(batch, count, shifts, hop)
    for shift in range(shifts):
        out[:, shift : shift + count] += chunks[:, :, shift]
    out = out.view(batch, -1)
    return nn.functional.pad(out, (0, length - out.shape[-1]))


class _StftMagnitude(torch.autograd.Function):
    """Padded audio ``(B, L)`` -> ``sqrt(|rfft(frame * window)|^2 + eps)`` ``(bins, B, F)``.

    The backward is written out (one irfft and an overlap-add) instead of going through autograd's
    generic STFT graph, whose zero-filled slice and unfold gradients cost more than the FFT itself.
    """

    @staticmethod
    def forward(ctx, padded: Tensor, window: Tensor, n_fft: int, hop: int, band: slice, eps: float) -> Tensor:  # type: ignore[override]
        spectrum = torch.fft.rfft(padded.unfold(-1, n_fft, hop) * window, dim=-1)[..., band]
        magnitude = _power_to_magnitude(spectrum, eps)
        ctx.save_for_backward(spectrum, magnitude, window)
        ctx.geometry = (padded.shape[-1], n_fft, hop, band, eps)
        return magnitude

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        spectrum, magnitude, window = ctx.saved_tensors
        length, n_fft, hop, band, eps = ctx.geometry
        # d|X_k|/dy_n = Re(conj(X_k) e^{-2 pi i k n / N}) / |X_k|, so dL/dy = Re(sum_k Z_k e^{+2 pi i k n / N})
        # with Z = grad * X / |X|: an unnormalised one-sided inverse DFT, i.e. irfft(norm="forward")
        # of Z with the bins that irfft counts twice (all but DC and Nyquist) halved.
        scale = grad / magnitude
        if eps == 0:
            scale = torch.where(magnitude > 0, scale, torch.zeros_like(scale))
        half = torch.view_as_real(spectrum) * (0.5 * scale).permute(1, 2, 0).unsqueeze(-1)
        n_bins = n_fft // 2 + 1
        start, stop, _ = band.indices(n_bins)
        if start or stop != n_bins:
            half = nn.functional.pad(half, (0, 0, start, n_bins - stop))
        half[..., 0, :] *= 2
        if n_fft % 2 == 0:
            half[..., n_fft // 2, :] *= 2
        frames = torch.fft.irfft(torch.view_as_complex(half), n=n_fft, dim=-1, norm="forward")
        return _overlap_add(frames.mul_(window), hop, length), None, None, None, None, None


def _magnitude(batch: Tensor, window: Tensor, config: MelConfig, band: slice = slice(None)) -> Tensor:
    """``(B, T)`` -> magnitude ``(bins, B, frames)`` (bins-major: contiguous for the mel GEMM).

    ``band`` limits the bins whose magnitude is computed (the filterbank's non-zero columns).
    """
    padded = _pad(batch, config)
    if torch.is_grad_enabled() and (padded.requires_grad or window.requires_grad):
        if window.requires_grad:
            raise ValueError("the STFT window is a constant; gradients to it are not supported")
        return _StftMagnitude.apply(padded, window, config.n_fft, config.hop_size, band, config.eps)
    frames = padded.unfold(-1, config.n_fft, config.hop_size)
    return _power_to_magnitude(torch.fft.rfft(frames * window, dim=-1)[..., band], config.eps, overwrite=True)


def _log(mel: Tensor, config: MelConfig) -> Tensor:
    if mel.requires_grad:
        mel = torch.clamp(mel, min=config.clip_val)
        return torch.log(mel) if config.log_base == "e" else torch.log10(mel)
    mel = mel.clamp_min_(config.clip_val)
    return mel.log_() if config.log_base == "e" else mel.log10_()


def _band(basis: Tensor) -> slice:
    """The bins where some mel filter is non-zero: the rest would contribute exact zeros."""
    used = torch.nonzero(basis.detach().cpu().ne(0).any(0)).flatten()
    if used.numel() == 0:
        return slice(0, basis.shape[-1])
    return slice(int(used[0]), int(used[-1]) + 1)


def _projection(basis: Tensor, band: slice) -> Tensor:
    """The filterbank restricted to ``band``, as the left operand of the mel GEMM.

    On the CPU it is a sparse CSR matrix: each triangular filter covers a few bins, so the dense
    GEMM is mostly multiplications by zero (about 4x faster for 80 bands; the skipped terms are exact
    zeros). Elsewhere it stays dense, where the GEMM is cheap and sparse kernels are not.
    """
    dense = basis[:, band].contiguous()
    if dense.device.type != "cpu":
        return dense
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return dense.to_sparse_csr()


class _SparseProjection(torch.autograd.Function):
    """``sparse (M, K) @ dense (K, N)`` with a backward that stays in the dense operand's dtype.

    MKL's sparse kernels have no bfloat16/float16 versions, and under autocast the default backward
    of ``torch.mm`` may be handed one; the gradient ``W^T @ grad`` is computed here in float32/64.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, columns: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        return torch.mm(weight, columns)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            return None, torch.mm(weight.t(), grad.to(weight.dtype))


def _project(weight: Tensor, magnitude: Tensor) -> Tensor:
    """Filterbank ``(num_mels, bins)`` x magnitude ``(bins, B, F)`` -> ``(num_mels, B * F)``."""
    bins, batch, frames = magnitude.shape
    columns = magnitude.view(bins, batch * frames)
    if weight.layout == torch.sparse_csr and torch.is_grad_enabled() and columns.requires_grad:
        return _SparseProjection.apply(weight, columns)
    return torch.mm(weight, columns)


def _mel_from_batch(batch: Tensor, window: Tensor, weight: Tensor, band: slice, config: MelConfig) -> Tensor:
    magnitude = _magnitude(batch, window, config, band)
    _, size, frames = magnitude.shape
    # The log runs on the GEMM's contiguous (num_mels, B * F) output, before the one layout copy.
    mel = _log(_project(weight, magnitude), config)
    return mel.view(-1, size, frames).permute(1, 0, 2).contiguous()


def _unbatch(out: Tensor, batched: bool) -> Tensor:
    return out if batched else out.squeeze(0)


def spectrogram(audio: Tensor, config: MelConfig) -> Tensor:
    """Linear magnitude spectrogram, ``sqrt(re^2 + im^2 + eps)``.

    Shapes: ``(T,) -> (n_fft // 2 + 1, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, n_fft // 2 + 1, frames)``.
    """
    with torch.autocast(audio.device.type, enabled=False):
        batch, batched = _as_batch(audio, config)
        window = _constants.get(config, batch.dtype, batch.device)[0]
        return _unbatch(_magnitude(batch, window, config).permute(1, 0, 2).contiguous(), batched)


def spec_to_mel(spec: Tensor, config: MelConfig) -> Tensor:
    """Linear spectrogram ``(..., n_fft // 2 + 1, frames)`` -> log-mel ``(..., num_mels, frames)``."""
    if spec.dim() < 2 or spec.shape[-2] != config.n_freqs:
        raise ValueError(
            f"spectrogram of shape {tuple(spec.shape)}: expected (..., {config.n_freqs}, frames) "
            f"for n_fft={config.n_fft}"
        )
    with torch.autocast(spec.device.type, enabled=False):
        spec = spec.to(_compute_dtype(spec.dtype))
        _, basis, band, _ = _constants.get(config, spec.dtype, spec.device)
        return _log(torch.matmul(basis[:, band], spec[..., band, :]), config)


def mel_spectrogram(audio: Tensor, config: MelConfig) -> Tensor:
    """Log-mel spectrogram.

    Shapes: ``(T,) -> (num_mels, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, num_mels, frames)``.
    float16/bfloat16 input (or autocast) is computed and returned in float32; float64 stays float64.
    """
    with torch.autocast(audio.device.type, enabled=False):
        batch, batched = _as_batch(audio, config)
        window, _, band, weight = _constants.get(config, batch.dtype, batch.device)
        return _unbatch(_mel_from_batch(batch, window, weight, band, config), batched)


class _FeatureModule(nn.Module):
    def __init__(self, config: MelConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = MelConfig.coerce(config)
        self.register_buffer("window", hann_window(self.config), persistent=False)

    def _constant(self, tensor: Tensor, dtype: torch.dtype) -> Tensor:
        return tensor if tensor.dtype == dtype else tensor.to(dtype)

    def extra_repr(self) -> str:
        return repr(self.config)


class Spectrogram(_FeatureModule):
    """``nn.Module`` form of :func:`spectrogram`; the window is a non-persistent buffer.

    Shapes: ``(T,) -> (n_fft // 2 + 1, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, n_fft // 2 + 1, frames)``.
    """

    def forward(self, audio: Tensor) -> Tensor:
        with torch.autocast(audio.device.type, enabled=False):
            batch, batched = _as_batch(audio, self.config)
            window = self._constant(self.window, batch.dtype)
            return _unbatch(_magnitude(batch, window, self.config).permute(1, 0, 2).contiguous(), batched)


class MelSpectrogram(_FeatureModule):
    """``nn.Module`` form of :func:`mel_spectrogram`; window and filterbank are non-persistent buffers.

    Shapes: ``(T,) -> (num_mels, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, num_mels, frames)``.
    """

    def __init__(self, config: MelConfig | Mapping[str, Any]) -> None:
        super().__init__(config)
        self.register_buffer("mel_basis", mel_filterbank(self.config), persistent=False)
        self.band = _band(self.mel_basis)
        # The GEMM operand derived from mel_basis (sparse on the CPU), per compute dtype: at most
        # float32 and float64. Dropped when the buffer is replaced (.to(), .double()) and on copies.
        self._projections: dict[torch.dtype, Tensor] = {}
        self._projections_of: Optional[Tensor] = None

    def _projection(self, dtype: torch.dtype) -> Tensor:
        if self._projections_of is not self.mel_basis:
            self._projections = {}
            self._projections_of = self.mel_basis
        weight = self._projections.get(dtype)
        if weight is None:
            weight = _projection(self._constant(self.mel_basis, dtype), self.band)
            self._projections[dtype] = weight
        return weight

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_projections={}, _projections_of=None)
        return state

    def forward(self, audio: Tensor) -> Tensor:
        with torch.autocast(audio.device.type, enabled=False):
            batch, batched = _as_batch(audio, self.config)
            window = self._constant(self.window, batch.dtype)
            weight = self._projection(batch.dtype)
            return _unbatch(_mel_from_batch(batch, window, weight, self.band, self.config), batched)
