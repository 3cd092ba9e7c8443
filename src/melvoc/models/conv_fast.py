"""BigVGAN's convolutions for inference as one matrix product per kernel tap, on weights stored tap-major.

The fast path of :class:`~melvoc.models.bigvgan.BigVGANGenerator` (``fast_activation=True``, the
default) computes its AMP blocks' convolutions and its up-sampling transposed convolutions here once
weight norm is folded for inference (:meth:`~melvoc.models.bigvgan.BigVGANGenerator.remove_weight_norm`,
which every inference entry point calls). Same parameters, state dict and function as
``nn.Conv1d`` / ``nn.ConvTranspose1d`` (within float32 rounding).

* **One product per tap.** A stride-1 "same" convolution with ``k`` taps at dilation ``d`` is
  ``y[:, t] = b + sum_j W_j x[:, t + d j - p]``: ``k`` products ``(C_out, C_in) @ (C_in, T)`` added into
  column ranges of ``y``. The zero padding is the ranges' ends (no padded copy of ``x``), and the
  residual ``x + conv(...)`` of an AMP block is the products' starting value. A transposed
  convolution is the same per output phase, the phases interleaved once at the end.
* **Tap-major weights.** A product reads ``W_j`` only if its rows are contiguous: :func:`tap_major_`
  stores a folded weight with the memory layout ``(C_out, k, C_in)`` under its usual shape
  ``(C_out, C_in, k)``; state dicts, ``load_state_dict`` and the exporters see the usual tensor, and
  no copy of the weights is kept.

Inference only: where autograd records (fine-tuning a folded generator), on other devices and
dtypes, under autocast and under tracing or export, the module's own convolution runs with the same
weights. Measured on the CPU (``benchmarks/bench_bigvgan.py``, README "Benchmarks"), generator
forward against the same code without the products: 1.17-1.18x at 256 channels, 1.02-1.05x at 1536.
oneDNN's direct convolution is slowest at kernel 11 and at few channels, where the products gain
most; using them at kernel 11 only gave less at 256 channels and the same at 1536. Training through
products with a hand-written backward was measured slower than oneDNN's and dropped.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["conv1d_taps", "conv_transpose1d_taps", "is_tap_major", "tap_major_"]


def tap_major_(module: nn.Module) -> nn.Module:
    """Store ``module``'s (folded, plain) weight tap-major, same values and shape. Returns ``module``."""
    weight = module.weight
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"tap_major_ needs a plain weight Parameter (fold weight norm first), got {type(weight).__name__}")
    with torch.no_grad():
        stored = torch.empty(weight.shape[0], weight.shape[2], weight.shape[1], dtype=weight.dtype, device=weight.device)
        weight.data = stored.permute(0, 2, 1).copy_(weight)
    return module


def is_tap_major(weight: Tensor) -> bool:
    """Whether ``weight (A, B, k)`` is stored as :func:`tap_major_` leaves it."""
    return weight.dim() == 3 and weight.permute(0, 2, 1).is_contiguous()


def _runs(x: Tensor, module: nn.Module) -> bool:
    """Whether the products run: eager inference on the CPU in float32/float64 with tap-major weights.
    A weight-normalised module (training) answers no before its weight is read: reading it would
    evaluate the norm once more than the convolution does."""
    if parametrize.is_parametrized(module, "weight"):
        return False
    weight = module.weight
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
        and is_tap_major(weight)
    )


def _rows(x: Tensor) -> Tensor:
    """``x (..., R, T)`` as a matrix product reads it: unit stride along time."""
    return x if x.stride(-1) == 1 else x.contiguous()


def conv1d_taps(x: Tensor, conv: nn.Conv1d, residual: Optional[Tensor] = None) -> Tensor:
    """``residual + conv(x)`` (``residual`` optional) for a stride-1 "same" ``conv`` with an odd kernel:
    ``(B, C_in, T) -> (B, C_out, T)``. Tap-major products where they run (module docstring), else ``conv``."""
    if not _runs(x, conv):
        y = conv(x)
        return y if residual is None else residual + y
    kernel, dilation = conv.kernel_size[0], conv.dilation[0]
    if kernel % 2 == 0 or conv.stride[0] != 1 or conv.groups != 1 or conv.padding[0] != dilation * (kernel - 1) // 2:
        raise ValueError(f"conv1d_taps computes odd-kernel stride-1 'same' convolutions, got {conv}")
    x = _rows(x)
    batch, _, length = x.shape
    taps = conv.weight.permute(0, 2, 1)  # (C_out, k, C_in), contiguous
    bias = conv.bias
    pad = dilation * (kernel - 1) // 2
    centre = kernel // 2
    out = x.new_empty(batch, taps.size(0), length)
    for b in range(batch):
        if residual is not None:
            torch.addmm(residual[b], taps[:, centre], x[b], out=out[b])
        elif bias is not None:
            torch.addmm(bias[:, None], taps[:, centre], x[b], out=out[b])
        else:
            torch.mm(taps[:, centre], x[b], out=out[b])
        for j in range(kernel):
            shift = dilation * j - pad
            if j == centre or abs(shift) >= length:
                continue
            if shift > 0:
                out[b, :, : length - shift].addmm_(taps[:, j], x[b, :, shift:])
            else:
                out[b, :, -shift:].addmm_(taps[:, j], x[b, :, : length + shift])
    if residual is not None and bias is not None:
        out.add_(bias[:, None])
    return out


def conv_transpose1d_taps(x: Tensor, conv: nn.ConvTranspose1d) -> Tensor:
    """``conv(x)`` for an up-sampling ``conv`` whose output is exactly ``stride`` times longer
    (``kernel - stride = 2 padding``, BigVGAN's): ``(B, C_in, T) -> (B, C_out, stride T)``.

    Output ``r i + q`` gathers tap ``j`` of input ``i - m`` where ``j - p = r m + q``: per phase ``q``, the
    products of its taps shifted by ``m``, into a phase-major buffer interleaved once at the end."""
    if not _runs(x, conv):
        return conv(x)
    kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if kernel - stride != 2 * padding or conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0:
        raise ValueError(f"conv_transpose1d_taps computes length-preserving up-sampling (kernel - stride = 2 padding), got {conv}")
    x = _rows(x)
    batch, _, length = x.shape
    taps = conv.weight.permute(0, 2, 1)  # (C_in, k, C_out), contiguous
    phases = x.new_zeros(batch, stride, taps.size(2), length)
    for j in range(kernel):
        m, q = divmod(j - padding, stride)
        if abs(m) >= length:
            continue
        lo, hi = max(0, m), length + min(0, m)
        for b in range(batch):
            phases[b, q, :, lo:hi].addmm_(taps[:, j].t(), x[b, :, lo - m : hi - m])
    out = x.new_empty(batch, taps.size(2), length, stride)
    if conv.bias is None:
        out.copy_(phases.permute(0, 2, 3, 1))
    else:
        torch.add(phases.permute(0, 2, 3, 1), conv.bias.view(1, -1, 1, 1), out=out)
    return out.view(batch, taps.size(2), length * stride)
