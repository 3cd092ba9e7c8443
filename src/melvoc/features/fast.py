"""The CPU fast path: log-mel without autograd, equal to the reference path (:mod:`melvoc.features.reference`).

:mod:`melvoc.features.functional` takes it for a call when the module's (or function's) ``fast`` switch is on
(the default), the audio is on the CPU, nothing needs a gradient and ``torch.compile`` is not
tracing. It computes what ``reference.log_mel`` computes, in the same steps, with the differences
that the benchmark (``benchmarks/bench_features.py``) shows to pay (its ``melvoc fast=False`` column
is the reference path on the same calls):

* **Plans: buffers reused from call to call.** The few MB of intermediates of a call (padded
  audio, windowed frames, magnitudes), allocated afresh, are handed back to the kernel by glibc's
  heap trimming on free, and the next call faults them in again, 4 KiB at a time: about 1,100 page
  faults per 16 x 8192 hifigan_22k call, which on a 2-core VM took longer than the computation.
  A plan keeps them per (config, batch size, length, dtype), in an LRU bounded in count and bytes.
  The rfft's output is the one intermediate still allocated per call (ATen has no ``out=`` for
  it); every result handed to the caller is a fresh tensor.
* **The mel projection as an ``embedding_bag``.** Each triangular filter covers a few bins, so
  the dense GEMM is mostly multiplications by zero. A bag per (item, filter) sums its bins'
  magnitude rows, weighted by the filter, and writes the result's own ``(B, num_mels, F)``
  layout, so the log runs in place. The magnitude is kept items-major ``(B, bins, F)`` for it: every
  kernel after the rfft then splits the work by items and reads rows its own thread wrote.
* **The reflect pre-pad as two gathers** of edge indices kept in the plan, written into the
  plan's padded buffer (about 10 us a call less than slices, flips and a fresh concatenation).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from melvoc.features.config import MelConfig, num_frames
from melvoc.features.reference import pad_for_stft

_compiling: Callable[[], bool] = torch.compiler.is_compiling


def applies(batch: Tensor, *constants: Tensor) -> bool:
    """Whether the fast path may compute this call: CPU, no autograd, not traced by ``torch.compile``."""
    if batch.device.type != "cpu" or _compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (batch, *constants)))


def log_mel(batch: Tensor, window: Tensor, basis: Tensor, config: MelConfig) -> Tensor:
    """``(B, T)`` audio -> log-mel ``(B, num_mels, F)``, ``B >= 1``; ``window`` in the audio's dtype.

    ``basis``: the filterbank ``(num_mels, n_freqs)`` in any dtype (its projection is derived once).
    """
    size, length = batch.shape
    band = config.mel_bins
    projection = _projection(basis, band, batch.dtype)
    plan = _plans.acquire(config, size, length, batch.dtype, projection)
    try:
        if plan.padded is None:  # zeros, none or center: pads allocated per call (not in the benchmark)
            source = pad_for_stft(batch, config)
        else:
            left, right = plan.edges
            edges = [batch.index_select(1, left), batch, batch.index_select(1, right)]
            source = torch.cat(edges, dim=-1, out=plan.padded)
        torch.mul(source.unfold(-1, config.n_fft, config.hop_size), window, out=plan.frames)
        parts = torch.view_as_real(torch.fft.rfft(plan.frames, dim=-1)[..., band])
        real, imag = parts.mul_(parts).unbind(-1)
        torch.add(real, imag, out=plan.power)
        plan.magnitude.add_(config.eps).sqrt_()
        mel = torch.embedding_bag(plan.table, *plan.bags[:2], False, 0, False, plan.bags[2])[0]
    finally:
        plan.lock.release()
    mel = mel.view(size, -1, plan.table.shape[-1]).clamp_min_(config.clip_val)
    return mel.log_() if config.log_base == "e" else mel.log10_()


class _Projection:
    """The filterbank over ``band`` as CSR rows (``crow``, ``col``, ``values``), for the bags."""

    def __init__(self, basis: Tensor, band: slice, dtype: torch.dtype) -> None:
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            sparse = basis.detach()[:, band].to(dtype).to_sparse_csr()
        self.crow, self.col, self.values = sparse.crow_indices(), sparse.col_indices(), sparse.values()
        self.bins = sparse.shape[1]
        self.version = _version(basis)

    def bags(self, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """``embedding_bag`` indices, offsets and weights for ``size`` items.

        Bag ``(b, m)`` sums ``values[m, k] * table[b * bins + k]`` over the bins ``k`` of filter ``m``,
        where the table is the magnitude ``(B, bins, F)`` viewed as ``(B * bins, F)``.
        """
        items = torch.arange(size).unsqueeze(1)
        with torch.inference_mode(False):
            return (
                (items * self.bins + self.col.unsqueeze(0)).reshape(-1),
                (items * self.col.numel() + self.crow[:-1].unsqueeze(0)).reshape(-1),
                self.values.repeat(size),
            )


_projections: WeakIdKeyDictionary = WeakIdKeyDictionary()  # filterbank tensor -> {dtype: _Projection}
_projections_lock = threading.Lock()


def _projection(basis: Tensor, band: slice, dtype: torch.dtype) -> _Projection:
    """The projection of ``basis`` in ``dtype``, kept while the tensor lives; rebuilt when it is written to."""
    found = _projections.get(basis, {}).get(dtype)  # a read needs no lock
    if found is None or found.version != _version(basis):
        found = _Projection(basis, band, dtype)
        with _projections_lock:
            _projections.setdefault(basis, {})[dtype] = found
    return found


def _version(tensor: Tensor) -> Optional[int]:
    """How often ``tensor`` was written to in place (inference tensors do not count)."""
    return None if tensor.is_inference() else tensor._version


class _Plan:
    """Buffers for one (config, batch size, length, dtype), and the bags of the projection last used with it."""

    def __init__(self, config: MelConfig, size: int, length: int, dtype: torch.dtype, bins: int) -> None:
        count = num_frames(length, config)
        self.lock = threading.Lock()
        self.bags: tuple[Tensor, Tensor, Tensor] = ()  # type: ignore[assignment]
        self.bags_of: Optional[_Projection] = None
        # Never inference tensors: those could not be written outside torch.inference_mode().
        with torch.inference_mode(False):
            reflect = config.pad_mode == "reflect" and config.pre_pad and not config.center
            self.padded = torch.empty(size, length + 2 * config.pre_pad, dtype=dtype) if reflect else None
            pad = config.pre_pad
            self.edges = (torch.arange(pad, 0, -1), torch.arange(length - 2, length - 2 - pad, -1)) if reflect else ()
            self.frames = torch.empty(size, count, config.n_fft, dtype=dtype)
            self.magnitude = torch.empty(size, bins, count, dtype=dtype)
        self.power = self.magnitude.transpose(1, 2)  # (B, F, bins): the view re^2 + im^2 is written through
        self.table = self.magnitude.view(size * bins, count)  # the rows the bags sum

    def use(self, projection: _Projection, size: int) -> None:
        if self.bags_of is not projection:
            self.bags, self.bags_of = projection.bags(size), projection

    @property
    def nbytes(self) -> int:
        tensors = [self.padded, self.frames, self.magnitude, *self.edges, *self.bags]
        return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


class _PlanCache:
    """LRU of :class:`_Plan` per (config, batch size, length, dtype), bounded by count and by the bytes they hold.

    A plan larger than the bound is used for its call only. A plan is used by one thread at a time;
    another thread calling with the same key gets a plan of its own for that call.
    """

    def __init__(self, max_bytes: int = 64 << 20, maxsize: int = 16) -> None:
        self.max_bytes = max_bytes
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, _Plan] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, config: MelConfig, size: int, length: int, dtype: torch.dtype, projection: _Projection) -> _Plan:
        """A plan holding ``projection``'s bags, locked for the caller (release ``plan.lock`` after)."""
        key = (config, size, length, dtype)
        with self._lock:
            plan = self._items.get(key)
            if plan is not None:
                self._items.move_to_end(key)
        if plan is None or not plan.lock.acquire(blocking=False):
            plan = _Plan(config, size, length, dtype, projection.bins)
            plan.lock.acquire()
            plan.use(projection, size)
            if plan.nbytes <= self.max_bytes:
                with self._lock:
                    self._items[key] = plan
                    while len(self._items) > self.maxsize or self._total() > self.max_bytes:
                        self._items.popitem(last=False)
        plan.use(projection, size)
        return plan

    def _total(self) -> int:
        return sum(plan.nbytes for plan in self._items.values())

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"plans": len(self._items), "plan_bytes": self._total(), "plan_max_bytes": self.max_bytes}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_plans = _PlanCache()


def cache_info() -> dict[str, int]:
    """Plans held (``plans``), the bytes they hold (``plan_bytes``) and the bound (``plan_max_bytes``)."""
    return _plans.info()


def clear_cache() -> None:
    """Drop every plan (frees their buffers)."""
    _plans.clear()
