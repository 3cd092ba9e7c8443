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
import functools
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

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


class _Constants:
    """What one (config, dtype, device) needs besides the audio: window, filterbank and its projection.

    Built outside ``torch.inference_mode`` (see :func:`_normal`), so that constants first made under it
    can still be saved for a backward later.
    """

    __slots__ = ("window", "basis", "band", "weight", "clamp")

    def __init__(self, window: Tensor, basis: Tensor, band: slice, clamp: bool) -> None:
        with torch.inference_mode(False):
            self.window = _normal(window)  # (n_fft,)
            self.basis = _normal(basis)  # (num_mels, n_freqs), dense
            self.band = band  # the bins some filter covers
            self.weight = _projection(self.basis, band)  # basis[:, band]; sparse CSR on the CPU
        self.clamp = clamp  # whether the log floor clip_val can bind (see _floor_can_bind)

    @property
    def uses_bags(self) -> bool:
        """Project with ``embedding_bag`` (float32 on the CPU); otherwise with ``torch.mm``."""
        return self.weight.layout == torch.sparse_csr and self.weight.dtype == torch.float32


def _normal(tensor: Tensor) -> Tensor:
    """``tensor``, or a copy of it that is not an inference tensor (call under ``inference_mode(False)``)."""
    return tensor.clone() if tensor.is_inference() else tensor


class _ConstantCache:
    """A small LRU of :class:`_Constants` per (config, dtype, device), for the functional API."""

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, _Constants] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: MelConfig, dtype: torch.dtype, device: torch.device) -> _Constants:
        key = (config, dtype, device)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        cpu_basis = mel_filterbank(config)
        value = _Constants(
            hann_window(config).to(device=device, dtype=dtype),
            cpu_basis.to(device=device, dtype=dtype),
            _band(cpu_basis),
            _floor_can_bind(cpu_basis, config),
        )
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


class _Plan:
    """Buffers for one (config, batch size, length, dtype): on the CPU reused from call to call.

    Why: the few MB of intermediates of a call (padded audio, windowed frames, magnitudes), allocated
    afresh, are handed back to the kernel by glibc's heap trimming on free, and the next call faults
    them in again, 4 KiB at a time: about 1,100 page faults per 16 x 8192 hifigan_22k call, which on
    a 2-core VM took 1.5 ms, three times the computation. A plan keeps them (and their views), so a
    call is only its kernels. The rfft's output is the one intermediate still allocated per call
    (ATen has no true ``out=`` for it); every result handed to the caller is a fresh tensor. On other
    devices (and under ``torch.compile``) a plan is made for one call, where the caching allocator
    makes that free.

    The magnitude of a mel plan is ``bins`` rows per item: items-major ``(B, bins, F)`` for the
    ``embedding_bag`` projection, bins-major ``(bins, B, F)`` for a GEMM. Items-major keeps every
    kernel after the rfft on the rows its thread wrote: the rfft, the power, sqrt, the bags and the
    log all split the work by items. Bins-major splits the power's writes by bins, so each thread
    reads rows the other core wrote; on this project's 2-vCPU VM that doubled the whole call in
    its slow phases, likely when the two vCPUs do not share a cache (1.06 ms against 0.54 ms
    items-major, measured in the same phase).
    """

    def __init__(
        self, config: MelConfig, size: int, length: int, dtype: torch.dtype, bins: int,
        device: torch.device = torch.device("cpu"), items_major: bool = False,
    ) -> None:
        n_fft, hop = config.n_fft, config.hop_size
        padded_length = _padded_length(length, config)
        self.size = size
        self.count = count = num_frames(length, config)
        self.lock = threading.Lock()
        self.bags: Optional[tuple[Tensor, Tensor, Tensor]] = None
        self.bags_for: Optional[Tensor] = None
        # Never inference tensors: those could not be written outside torch.inference_mode().
        with torch.inference_mode(False):
            empty = functools.partial(torch.empty, dtype=dtype, device=device)
            self.padded = empty(size, padded_length) if padded_length != length else None
            self.source = None if self.padded is None else self.padded.unfold(-1, n_fft, hop)
            self.frames = empty(size, count, n_fft)
            # the magnitude, its (B, F, bins) view the power is written through, and the 2-D view
            # the projection reads: the (B * bins, F) table of the bags, or the GEMM's (bins, B * F)
            self.magnitude = self.power = self.table = self.columns = None
            if bins and items_major:
                self.magnitude = empty(size, bins, count)
                self.power = self.magnitude.transpose(1, 2)
                self.table = self.magnitude.view(size * bins, count)
            elif bins:
                self.magnitude = empty(bins, size, count)
                self.power = self.magnitude.permute(1, 2, 0)
                self.columns = self.magnitude.view(bins, size * count)
        # the reflect pre-pad's two mirrored edges as gathers (one op each, not a slice and a flip)
        pad = config.pre_pad
        self.edges = None
        if pad and config.pad_mode == "reflect" and not config.center:
            self.edges = (
                torch.arange(pad, 0, -1, device=device),
                torch.arange(length - 2, length - 2 - pad, -1, device=device),
            )

    @property
    def nbytes(self) -> int:
        tensors = [self.padded, self.frames, self.magnitude, *(self.bags or ())]
        return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)

    def set_bags(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``embedding_bag`` indices, offsets and weights projecting :attr:`table` with the CSR ``weight``.

        Bag ``(b, m)`` sums ``weight[m, k] * table[b * bins + k]`` over the bins ``k`` of filter
        ``m``, where the table is the items-major magnitude ``(B, bins, F)`` viewed as
        ``(B * bins, F)``: the output ``(B * num_mels, F)`` is the result's own layout. Rebuilt when
        another weight tensor (another module's, or a replaced filterbank) uses this plan.
        """
        crow, col = weight.crow_indices(), weight.col_indices()
        items = torch.arange(self.size).unsqueeze(1)
        with torch.inference_mode(False):
            self.bags = (
                (items * weight.shape[1] + col.unsqueeze(0)).reshape(-1),
                (items * col.numel() + crow[:-1].unsqueeze(0)).reshape(-1),
                weight.values().repeat(self.size),
            )
        self.bags_for = weight
        return self.bags

    def frame_source(self, batch: Tensor, config: MelConfig) -> Tensor:
        """The frames ``(B, F, n_fft)`` of ``(B, T)`` audio: an ``unfold`` view of the padded buffer."""
        if self.padded is None:
            return batch.unfold(-1, config.n_fft, config.hop_size)
        if self.edges is not None:
            left, right = self.edges
            torch.cat([batch.index_select(1, left), batch, batch.index_select(1, right)], dim=-1, out=self.padded)
        else:
            _pad(batch, config, out=self.padded)
        return self.source


class _PlanCache:
    """LRU of :class:`_Plan` per (config, batch size, length, dtype), bounded by the memory they hold.

    A plan larger than the bound is used for its call only. A plan is used by one thread at a time;
    another thread calling with the same key gets a plan of its own for that call.
    """

    def __init__(self, max_bytes: int = 64 << 20, maxsize: int = 16) -> None:
        self.max_bytes = max_bytes
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, _Plan] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(
        self, config: MelConfig, size: int, length: int, dtype: torch.dtype, constants: Optional[_Constants] = None
    ) -> _Plan:
        """A plan, locked for the caller (release ``plan.lock`` after).

        ``constants``: for a mel plan (magnitude buffer and, for ``embedding_bag`` projections, the
        bags of ``constants.weight``); ``None`` for a spectrogram plan.
        """
        bins = 0 if constants is None else constants.weight.shape[1]
        bags = constants is not None and constants.uses_bags
        key = (config, size, length, dtype, bins)  # bags follow from the dtype on the CPU
        with self._lock:
            plan = self._items.get(key)
            if plan is not None:
                self._items.move_to_end(key)
        if plan is not None and plan.lock.acquire(blocking=False):
            if bags and plan.bags_for is not constants.weight:
                plan.set_bags(constants.weight)
            return plan
        plan = _Plan(config, size, length, dtype, bins, items_major=bags)
        plan.lock.acquire()
        if bags:
            plan.set_bags(constants.weight)
        if plan.nbytes <= self.max_bytes:
            with self._lock:
                self._items[key] = plan
                while len(self._items) > self.maxsize or self._total() > self.max_bytes:
                    self._items.popitem(last=False)
        return plan

    def _total(self) -> int:
        return sum(plan.nbytes for plan in self._items.values())

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._total()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


_constants = _ConstantCache()
_plans = _PlanCache()


def cache_info() -> dict[str, int]:
    """Sizes and bounds of the functional API's constants cache and of the CPU plans (buffers reused per call)."""
    return {
        "size": len(_constants),
        "maxsize": _constants.maxsize,
        "plans": len(_plans),
        "plan_bytes": _plans.nbytes,
        "plan_max_bytes": _plans.max_bytes,
    }


def clear_cache() -> None:
    """Drop every cached window, filterbank and CPU plan (frees their memory)."""
    _constants.clear()
    _plans.clear()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _autocast_query() -> Callable[[str], bool]:
    try:
        torch.is_autocast_enabled("cpu")  # torch >= 2.4: per device type
    except TypeError:  # pragma: no cover - older torch: assume on, and always switch it off
        return lambda device_type: True

    def query(device_type: str) -> bool:
        try:
            return torch.is_autocast_enabled(device_type)
        except RuntimeError:  # a device type autocast does not know (meta): nothing to switch off
            return False

    return query


_autocast_on = _autocast_query()
_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _as_batch(audio: Tensor, config: MelConfig, minimum: Optional[int] = None) -> tuple[Tensor, bool]:
    """``(T,)``, ``(B, T)`` or ``(B, 1, T)`` -> ``(B, T)`` in the compute dtype; flag: had a batch dim."""
    if audio.dim() == 2:
        batch, batched = audio, True
    elif audio.dim() == 1:
        batch, batched = audio.unsqueeze(0), False
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
    if minimum is None:
        minimum = min_audio_length(config)
    if batch.shape[-1] < minimum:
        raise ValueError(
            f"audio of {batch.shape[-1]} samples is too short for n_fft={config.n_fft}, "
            f"hop_size={config.hop_size}, pad_mode={config.pad_mode!r}: need at least {minimum} samples"
        )
    if batch.dtype in _HALF_DTYPES:
        batch = batch.float()
    return batch, batched


def _reflect(batch: Tensor, pad: int, out: Optional[Tensor] = None) -> Tensor:
    """``F.pad(..., mode="reflect")`` on ``(B, T)``; a flip-and-concatenate is ~4x faster on CPU."""
    return torch.cat([batch[:, 1 : pad + 1].flip(-1), batch, batch[:, -pad - 1 : -1].flip(-1)], dim=-1, out=out)


def _pad(batch: Tensor, config: MelConfig, out: Optional[Tensor] = None) -> Tensor:
    """The STFT input: pre-pad, then ``center``'s reflect pad of ``n_fft // 2``. ``(B, T) -> (B, L)``.

    ``out``: where to write it (shape ``(B, L)``); ignored when there is no padding to do.
    """
    pad = config.pre_pad
    if config.center:
        if pad:
            batch = _reflect(batch, pad) if config.pad_mode == "reflect" else nn.functional.pad(batch, (pad, pad))
        pad = config.n_fft // 2
    elif not pad:
        return batch
    elif config.pad_mode != "reflect":
        edge = batch.new_zeros(batch.shape[0], pad)
        return torch.cat([edge, batch, edge], dim=-1, out=out)
    return _reflect(batch, pad, out=out)


def _padded_length(num_samples: int, config: MelConfig) -> int:
    return num_samples + 2 * config.pre_pad + (2 * (config.n_fft // 2) if config.center else 0)


def _power_to_magnitude(spectrum: Tensor, eps: float, overwrite: bool = False) -> Tensor:
    """``sqrt(re^2 + im^2 + eps)`` of ``(B, F, bins)`` -> ``(bins, B, F)``; no autograd.

    The bins-major result is what the filterbank GEMM wants, written there directly (no transpose
    copy). ``overwrite``: square ``spectrum`` in place (saves an allocation when it is not needed after).
    """
    batch, frames, bins = spectrum.shape
    out = torch.empty(bins, batch, frames, dtype=spectrum.real.dtype, device=spectrum.device)
    _square_sum_into(spectrum, out.permute(1, 2, 0), overwrite)
    return _sqrt_eps_(out, eps)


def _square_sum_into(spectrum: Tensor, target: Tensor, in_place: bool) -> None:
    """``re^2 + im^2`` of complex ``spectrum`` into ``target`` (same shape, any layout).

    ``re*re + im*im`` on the real view, then one add: bit-identical to the original's
    ``view_as_real(X).pow(2).sum(-1)`` and several times faster (a reduction over a size-2 dim is
    slow). For ``eps == 0`` it is also much faster than the complex abs (a scaled hypot), within an
    ulp of it. ``in_place``: square ``spectrum`` itself (when it is not needed after).
    """
    parts = torch.view_as_real(spectrum)
    parts = parts.mul_(parts) if in_place else parts * parts
    real, imag = parts.unbind(-1)
    torch.add(real, imag, out=target)


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
    """``(B, T)`` -> magnitude ``(bins, B, frames)`` (bins-major: contiguous for the mel GEMM), with autograd.

    ``band`` limits the bins whose magnitude is computed (the filterbank's non-zero columns).
    """
    padded = _pad(batch, config)
    if torch.is_grad_enabled() and (padded.requires_grad or window.requires_grad):
        if window.requires_grad:
            raise ValueError("the STFT window is a constant; gradients to it are not supported")
        return _StftMagnitude.apply(padded, window, config.n_fft, config.hop_size, band, config.eps)
    frames = padded.unfold(-1, config.n_fft, config.hop_size)
    return _power_to_magnitude(torch.fft.rfft(frames * window, dim=-1)[..., band], config.eps, overwrite=True)


def _needs_autograd(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _power_into(source: Tensor, window: Tensor, frames: Tensor, band: slice, target: Tensor) -> None:
    """``re^2 + im^2`` of ``rfft(source * window)`` over ``band`` into ``target`` ``(B, F, bins)`` (any layout).

    ``source``: frames ``(B, F, n_fft)`` (a view); ``frames``: the buffer the windowed frames go to.
    The rfft's output is allocated by ATen. No autograd.
    """
    torch.mul(source, window, out=frames)
    _square_sum_into(torch.fft.rfft(frames, dim=-1)[..., band], target, in_place=True)


def _sqrt_eps_(power: Tensor, eps: float) -> Tensor:
    """``sqrt(power + eps)`` in place (on the buffer's own contiguous layout, the fast one)."""
    if eps:
        power.add_(eps)
    return power.sqrt_()


def _mel_inference(batch: Tensor, constants: _Constants, config: MelConfig) -> Tensor:
    """``(B, T)`` -> log-mel ``(B, num_mels, frames)`` without autograd.

    Pad, window, rfft, the power, eps, sqrt, the filterbank projection, the log
    floor where it can bind, the log. On the CPU every intermediate but the rfft's output lives in
    a reused :class:`_Plan`, and for float32 the projection is an ``embedding_bag`` (see
    :meth:`_Plan.set_bags`): about 3x faster than MKL's sparse GEMM at these sizes, and it writes
    the result's layout, so the log runs in place with no transpose. Elsewhere it is a GEMM.
    """
    size, length = batch.shape
    weight = constants.weight
    reused = batch.device.type == "cpu" and not _compiling()  # plans are eager-mode machinery
    if reused:
        plan = _plans.acquire(config, size, length, batch.dtype, constants)
    else:
        plan = _Plan(config, size, length, batch.dtype, weight.shape[1], batch.device)
    try:
        _power_into(plan.frame_source(batch, config), constants.window, plan.frames, constants.band, plan.power)
        _sqrt_eps_(plan.magnitude, config.eps)
        if plan.bags is None:
            return _log_to_items(torch.mm(weight, plan.columns), size, constants, config)
        indices, offsets, weights = plan.bags
        mel = torch.embedding_bag(plan.table, indices, offsets, False, 0, False, weights)[0].view(size, -1, plan.count)
    finally:
        if reused:
            plan.lock.release()
    if constants.clamp:
        mel.clamp_min_(config.clip_val)
    return mel.log_() if config.log_base == "e" else mel.log10_()


def _log_to_items(mel: Tensor, size: int, constants: _Constants, config: MelConfig) -> Tensor:
    """Mel ``(num_mels, B * F)`` -> log-mel ``(B, num_mels, F)``: the log writes the result's layout."""
    if constants.clamp:
        mel.clamp_min_(config.clip_val)
    mels = mel.shape[0]
    out = mel.new_empty(size, mels, mel.shape[1] // size)
    log = torch.log if config.log_base == "e" else torch.log10
    log(mel.view(mels, size, -1), out=out.permute(1, 0, 2))
    return out


def _spectrogram_inference(batch: Tensor, window: Tensor, config: MelConfig) -> Tensor:
    """``(B, T)`` -> magnitude ``(B, n_freqs, frames)`` without autograd (a reused plan on the CPU)."""
    size, length = batch.shape
    out = batch.new_empty(size, config.n_freqs, num_frames(length, config))
    reused = batch.device.type == "cpu" and not _compiling()
    plan = _plans.acquire(config, size, length, batch.dtype) if reused else _Plan(
        config, size, length, batch.dtype, 0, batch.device
    )
    try:
        _power_into(plan.frame_source(batch, config), window, plan.frames, slice(None), out.transpose(1, 2))
    finally:
        if reused:
            plan.lock.release()
    return _sqrt_eps_(out, config.eps)


def _log(mel: Tensor, config: MelConfig) -> Tensor:
    if mel.requires_grad:
        mel = torch.clamp(mel, min=config.clip_val)
        return torch.log(mel) if config.log_base == "e" else torch.log10(mel)
    mel = mel.clamp_min_(config.clip_val)
    return mel.log_() if config.log_base == "e" else mel.log10_()


def _band(basis: Tensor) -> slice:
    """The bins where some mel filter is non-zero: the rest would contribute exact zeros.

    Computed in NumPy from a host copy, so no ATen op reads a scalar back (see the host-read test).
    """
    used = np.flatnonzero((basis.detach().to("cpu", torch.float64).numpy() != 0).any(axis=0))
    if used.size == 0:
        return slice(0, basis.shape[-1])
    return slice(int(used[0]), int(used[-1]) + 1)


def _floor_can_bind(basis: Tensor, config: MelConfig) -> bool:
    """Whether ``clamp(mel, clip_val)`` can change anything, for the filterbank ``(num_mels, n_freqs)``.

    Every magnitude is at least ``sqrt(eps)``, so with non-negative filters each mel value is at
    least ``sqrt(eps)`` times its filter's sum. Where that bound clears ``clip_val`` for every
    filter, with a 1% margin for rounding (and for a filterbank cast to half precision and back),
    the clamp is a no-op and is skipped. NaN passes through either way.
    """
    if config.eps <= 0:
        return True
    weights = basis.detach().to("cpu", torch.float64).numpy()
    if (weights < 0).any():
        return True
    return not bool((weights.sum(axis=1) * math.sqrt(config.eps) * 0.99 > config.clip_val).all())


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


def _mel(batch: Tensor, constants: _Constants, config: MelConfig) -> Tensor:
    """``(B, T)`` -> log-mel ``(B, num_mels, frames)``: the inference path, or the autograd one."""
    if batch.shape[0] == 0:  # MKL's FFT rejects an empty batch
        # "+ batch.sum()" (a zero) keeps the result attached to the graph when the audio needs grad
        return batch.new_zeros(0, constants.basis.shape[0], num_frames(batch.shape[-1], config)) + batch.sum()
    if not _needs_autograd(batch, constants.window, constants.weight):
        return _mel_inference(batch, constants, config)
    magnitude = _magnitude(batch, constants.window, config, constants.band)
    _, size, frames = magnitude.shape
    # The log runs on the GEMM's contiguous (num_mels, B * F) output, before the one layout copy.
    mel = _log(_project(constants.weight, magnitude), config)
    return mel.view(-1, size, frames).permute(1, 0, 2).contiguous()


def _spectrogram(batch: Tensor, window: Tensor, config: MelConfig) -> Tensor:
    """``(B, T)`` -> magnitude ``(B, n_freqs, frames)``: the inference path, or the autograd one."""
    if batch.shape[0] == 0:  # MKL's FFT rejects an empty batch
        return batch.new_zeros(0, config.n_freqs, num_frames(batch.shape[-1], config)) + batch.sum()
    if not _needs_autograd(batch, window):
        return _spectrogram_inference(batch, window, config)
    return _magnitude(batch, window, config).permute(1, 0, 2).contiguous()


def _unbatch(out: Tensor, batched: bool) -> Tensor:
    return out if batched else out.squeeze(0)


def spectrogram(audio: Tensor, config: MelConfig) -> Tensor:
    """Linear magnitude spectrogram, ``sqrt(re^2 + im^2 + eps)``.

    Shapes: ``(T,) -> (n_fft // 2 + 1, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, n_fft // 2 + 1, frames)``.
    """
    with torch.autocast(audio.device.type, enabled=False):
        batch, batched = _as_batch(audio, config)
        window = _constants.get(config, batch.dtype, batch.device).window
        return _unbatch(_spectrogram(batch, window, config), batched)


def spec_to_mel(spec: Tensor, config: MelConfig) -> Tensor:
    """Linear spectrogram ``(..., n_fft // 2 + 1, frames)`` -> log-mel ``(..., num_mels, frames)``."""
    if spec.dim() < 2 or spec.shape[-2] != config.n_freqs:
        raise ValueError(
            f"spectrogram of shape {tuple(spec.shape)}: expected (..., {config.n_freqs}, frames) "
            f"for n_fft={config.n_fft}"
        )
    with torch.autocast(spec.device.type, enabled=False):
        spec = spec.to(_compute_dtype(spec.dtype))
        constants = _constants.get(config, spec.dtype, spec.device)
        return _log(torch.matmul(constants.basis[:, constants.band], spec[..., constants.band, :]), config)


def mel_spectrogram(audio: Tensor, config: MelConfig) -> Tensor:
    """Log-mel spectrogram.

    Shapes: ``(T,) -> (num_mels, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, num_mels, frames)``.
    float16/bfloat16 input (or autocast) is computed and returned in float32; float64 stays float64.
    """
    with torch.autocast(audio.device.type, enabled=False):
        batch, batched = _as_batch(audio, config)
        constants = _constants.get(config, batch.dtype, batch.device)
        return _unbatch(_mel(batch, constants, config), batched)


class _FeatureModule(nn.Module):
    def __init__(self, config: MelConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = MelConfig.coerce(config)
        self.min_length = min_audio_length(self.config)
        self.register_buffer("window", hann_window(self.config), persistent=False)

    def _constant(self, tensor: Tensor, dtype: torch.dtype) -> Tensor:
        return tensor if tensor.dtype == dtype else tensor.to(dtype)

    def forward(self, audio: Tensor) -> Tensor:
        if _autocast_on(audio.device.type):
            with torch.autocast(audio.device.type, enabled=False):
                return self._forward(audio)
        return self._forward(audio)

    def _forward(self, audio: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return repr(self.config)


class Spectrogram(_FeatureModule):
    """``nn.Module`` form of :func:`spectrogram`; the window is a non-persistent buffer.

    Shapes: ``(T,) -> (n_fft // 2 + 1, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, n_fft // 2 + 1, frames)``.
    """

    def _forward(self, audio: Tensor) -> Tensor:
        batch, batched = _as_batch(audio, self.config, self.min_length)
        return _unbatch(_spectrogram(batch, self._constant(self.window, batch.dtype), self.config), batched)


class MelSpectrogram(_FeatureModule):
    """``nn.Module`` form of :func:`mel_spectrogram`; window and filterbank are non-persistent buffers.

    Shapes: ``(T,) -> (num_mels, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, num_mels, frames)``.
    """

    def __init__(self, config: MelConfig | Mapping[str, Any]) -> None:
        super().__init__(config)
        self.register_buffer("mel_basis", mel_filterbank(self.config), persistent=False)
        self.band = _band(self.mel_basis)
        self.floor_can_bind = _floor_can_bind(self.mel_basis, self.config)
        # band and floor_can_bind describe this filterbank object; .to()/.double() keep its values
        # (see _apply), another tensor assigned to mel_basis gets them recomputed.
        self._described_basis: Optional[Tensor] = self.mel_basis
        # The constants derived from the buffers (the GEMM operand is sparse on the CPU), per
        # compute dtype: at most float32 and float64. Dropped when a buffer is replaced (.to(),
        # .double(), assignment) and on copies.
        self._derived: dict[torch.dtype, _Constants] = {}
        self._derived_of: Optional[tuple[Tensor, Tensor]] = None

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "MelSpectrogram":
        module = super()._apply(fn, recurse)
        self._described_basis = self._buffers["mel_basis"]  # converted, same values
        return module

    def _derived_constants(self, dtype: torch.dtype) -> _Constants:
        buffers = self._buffers  # faster than nn.Module.__getattr__, on every call
        basis, window = buffers["mel_basis"], buffers["window"]
        if self._derived_of is None or self._derived_of[0] is not basis or self._derived_of[1] is not window:
            if basis is not self._described_basis:  # a filterbank of the caller's: describe it (one host copy)
                self.band = _band(basis)
                self.floor_can_bind = _floor_can_bind(basis, self.config)
                self._described_basis = basis
            self._derived = {}
            self._derived_of = (basis, window)
        constants = self._derived.get(dtype)
        if constants is None:
            constants = _Constants(
                self._constant(self.window, dtype), self._constant(self.mel_basis, dtype), self.band, self.floor_can_bind
            )
            self._derived[dtype] = constants
        return constants

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_derived={}, _derived_of=None, _described_basis=None)
        return state

    def _forward(self, audio: Tensor) -> Tensor:
        batch, batched = _as_batch(audio, self.config, self.min_length)
        return _unbatch(_mel(batch, self._derived_constants(batch.dtype), self.config), batched)
