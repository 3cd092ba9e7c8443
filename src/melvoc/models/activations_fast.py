"""The anti-aliased Snake / SnakeBeta of :mod:`melvoc.models.activations`, computed faster, same function.

:class:`FastAntiAliasedActivation` is :class:`~melvoc.models.activations.AntiAliasedActivation` (same
parameters, buffers and state-dict keys) with another ``forward``. The reference resamples each channel
with a depthwise transposed convolution (ATen's slow grouped path), replicate-pads twice and evaluates
the Snake formula in five passes over memory. Here, since every channel uses the same low-pass:

* **Polyphase up-sampling as one matrix product.** The 2x up-sampler's even and odd outputs are two
  ``K/2``-tap filters of the input. The padded input of all channels is cut into rows of ``BLOCK``
  samples; one ``(rows, BLOCK) @ (BLOCK, 2 BLOCK)`` product plus one for the few samples each row
  needs from the next (a strided view, no copy) gives every output, already interleaved.
* **Padding once.** The input is replicate-padded once, far enough that the up-sampled signal covers
  the down-sampler's reach; the down-sampler's replicate padding (of the up-sampled signal) is two
  small in-place copies at the ends instead of a padded copy of the whole signal.
* **Down-sampling as one matrix product** on the same row layout: ``(rows, 2 BLOCK) @ (2 BLOCK, BLOCK)``
  plus the next row's head; the stride and the crop are in the matrix.
* **Snake in four passes** (multiply, ``sin_``, square, ``addcmul``), in place on one buffer, with
  ``1 / (beta + eps)`` computed once per call for the ``C`` channels instead of a division per sample.
* **A hand-written backward** (:class:`_AntiAliasedSnake`): the adjoint products, the adjoint of the
  padding, and Snake's derivative from one ``sin`` and one ``cos`` of the saved input. Only the padded
  input is kept for it (``C x T`` values, where autograd through the reference keeps about nine times that).

Under tracing (ONNX export, ``torch.jit.trace``) the same products run out of place (:func:`_traceable`),
since in-place writes into slices do not export. Everything is plain torch; it runs on any device and
under ``torch.compile``. Under autocast the products run in the autocast dtype and Snake in the
promoted dtype, as the reference's convolutions and elementwise ops do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from melvoc.models.activations import _NO_DIV_BY_ZERO, AntiAliasedActivation, Snake, SnakeBeta, _channel_param

__all__ = ["BLOCK", "FastAntiAliasedActivation", "resampling_matrices"]

#: Samples per row of the block matrix products (measured: 16 beats 8, 32 and 64 on the CPU).
BLOCK = 16


@dataclass(frozen=True)
class _Geometry:
    """Index bookkeeping for one low-pass length ``K`` (even) and block ``L``.

    The padded input ``xp[m] = x[clamp(m - x_shift)]`` has ``rows * L`` samples per channel; the
    up-sampled buffer ``u[n]`` holds the 2x signal's sample ``n - z_shift``.
    """

    kernel_size: int
    block: int
    x_shift: int  # input samples before x[0] in the padded input
    z_shift: int  # up-sampled samples before z[0] in the up-sampled buffer (even)
    up_taps: int  # input samples one output pair reads
    down_offset: int  # first buffer index output 0 reads
    up_halo: int  # samples a row of the up-sampler reads from the next row
    down_halo: int  # samples a row of the down-sampler reads from the next row

    @classmethod
    def of(cls, kernel_size: int, block: int = BLOCK) -> "_Geometry":
        k = kernel_size
        # Output 2i + q of the up-sampler is sum_o 2 h[k/2 - 1 + q - 2 o] x[clamp(i + o)] (the reference's
        # zero-stuffing, padding and crop, written out); o spans [lo, hi] over both phases.
        lo = min(-((k // 2) // 2), -((k // 2 - 1) // 2))
        hi = max((k // 2 - 1) // 2, (k // 2) // 2)
        z_shift = 2 * math.ceil((k // 2 - 1) / 2)
        down_offset = z_shift - (k // 2 - 1)
        geometry = cls(
            kernel_size=k,
            block=block,
            x_shift=z_shift // 2 - lo,
            z_shift=z_shift,
            up_taps=hi - lo + 1,
            down_offset=down_offset,
            up_halo=hi - lo,
            down_halo=down_offset + k - 2,
        )
        if geometry.up_halo > block or geometry.down_halo > 2 * block:
            raise ValueError(f"anti-aliasing kernel_size {k} is too long for block {block}")
        return geometry

    def rows(self, length: int) -> int:
        """Rows per channel for ``length`` input samples: the up-sampler's reach and one spare row, so
        that a row's look into the next one never crosses into another channel where it matters."""
        up_reach = self.z_shift // 2 + length + self.up_taps - 1
        return max(math.ceil(up_reach / self.block), math.ceil(length / self.block) + 1)


def resampling_matrices(taps: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four matrices of the block products for a low-pass ``taps (K,)`` (float64).

    Returns ``(up, up_halo, down, down_halo)`` of shapes ``(L, 2L)``, ``(up_halo, 2L)``, ``(2L, L)``,
    ``(down_halo, L)``: a row of ``L`` padded input samples times ``up`` plus the next row's first samples
    times ``up_halo`` is ``2L`` up-sampled samples, interleaved; likewise down with the stride in the matrix.
    """
    k = taps.numel()
    g = _Geometry.of(k, block)
    taps = taps.to(torch.float64)
    up = torch.zeros(block + g.up_halo, 2 * block, dtype=torch.float64)
    first = g.z_shift // 2 - g.x_shift  # the offset o of a pair's first input sample
    for p in range(block):
        for q in range(2):
            for t in range(g.up_taps):
                index = k // 2 - 1 + q - 2 * (t + first)
                if 0 <= index < k:
                    up[p + t, 2 * p + q] = 2 * taps[index]
    down = torch.zeros(2 * block + g.down_halo, block, dtype=torch.float64)
    for p in range(block):
        down[2 * p + g.down_offset : 2 * p + g.down_offset + k, p] = taps
    return up[:block], up[block:], down[: 2 * block], down[2 * block :]


class _Plan:
    """Geometry, the four matrices in the compute dtype, and the shapes of one call."""

    def __init__(self, geometry: _Geometry, matrices: tuple[Tensor, ...], x: Tensor) -> None:
        self.g = geometry
        self.up, self.up_halo, self.down, self.down_halo = matrices
        self.batch, self.channels, self.length = x.shape
        self.rows = geometry.rows(self.length)


def _pad(x: Tensor, plan: _Plan) -> Tensor:
    """``(B, C, T) -> (B * C * rows, L)``: replicate padding, ``x_shift`` before and the rest after."""
    b, c, t = x.shape
    g = plan.g
    after = plan.rows * g.block - g.x_shift - t
    return torch.cat([x[..., :1].expand(b, c, g.x_shift), x, x[..., -1:].expand(b, c, after)], -1).view(-1, g.block)


def _up(xp: Tensor, plan: _Plan) -> Tensor:
    """``(N, L)`` padded rows -> ``(N, 2L)`` up-sampled rows (the last row's tail is never used)."""
    u = torch.mm(xp, plan.up)
    torch.addmm(u[:-1], xp[1:, : plan.g.up_halo], plan.up_halo, out=u[:-1])
    return u


def _down(z: Tensor, plan: _Plan) -> Tensor:
    """``(N, 2L)`` rows of the 2x signal -> ``(N, L)`` low-passed, decimated rows."""
    y = torch.mm(z, plan.down)
    torch.addmm(y[:-1], z[1:, : plan.g.down_halo], plan.down_halo, out=y[:-1])
    return y


def _valid(plan: _Plan) -> tuple[int, int]:
    """The up-sampled buffer's samples ``[start, stop)`` that are the 2x signal (the rest is padding)."""
    return plan.g.z_shift, plan.g.z_shift + 2 * plan.length


def _replicate_ends_(z: Tensor, plan: _Plan) -> None:
    """The down-sampler's replicate padding, written over the buffer's ends: ``z (B, C, S)``."""
    start, stop = _valid(plan)
    z[..., :start] = z[..., start : start + 1]
    z[..., stop:] = z[..., stop - 1 : stop]


def _snake_(u: Tensor, alpha: Tensor, inv_beta: Tensor) -> Tensor:
    """``u + inv_beta * sin(alpha u)^2`` in a new buffer, four passes; dtype as the reference's promotion."""
    z = u * alpha
    z.sin_()
    z.mul_(z)
    return torch.addcmul(u, z, inv_beta, out=z)


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _AntiAliasedSnake(torch.autograd.Function):
    """``x (B, C, T), alpha (1, C, 1), inv_beta (1, C, 1) -> (B, C, T)`` with a hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, inv_beta: Tensor, plan: _Plan, dtype: torch.dtype) -> Tensor:
        b, c, t = x.shape
        xp = _pad(x.to(dtype), plan)
        u = _up(xp, plan).view(b, c, -1)
        z = _snake_(u, alpha, inv_beta)
        _replicate_ends_(z, plan)
        y = _down(z.to(dtype).view(-1, 2 * plan.g.block), plan)
        ctx.save_for_backward(xp, alpha, inv_beta)
        ctx.plan, ctx.x_dtype = plan, x.dtype
        return y.view(b, c, -1)[..., :t]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        xp, alpha, inv_beta = ctx.saved_tensors
        plan: _Plan = ctx.plan
        g = plan.g
        b, c, t = plan.batch, plan.channels, plan.length
        dtype = xp.dtype
        # Adjoint of the down-sampler (the crop to T, then the block products).
        gy = grad.new_zeros(b, c, plan.rows * g.block, dtype=dtype)
        gy[..., :t] = grad
        gy = gy.view(-1, g.block)
        gz = torch.mm(gy, plan.down.t())
        gz[1:, : g.down_halo].addmm_(gy[:-1], plan.down_halo.t())
        gz = gz.view(b, c, -1)
        # Adjoint of the replicated ends: their gradients go to the samples they copy.
        start, stop = _valid(plan)
        gz[..., start] += gz[..., :start].sum(-1)
        gz[..., stop - 1] += gz[..., stop:].sum(-1)
        gz[..., :start] = 0
        gz[..., stop:] = 0
        # Snake: dz/du = 1 + 2 a ib sin(a u) cos(a u), dz/da = 2 ib u sin cos, dz/d(ib) = sin^2.
        u = _up(xp, plan).view(b, c, -1)
        theta = u * alpha
        sin, cos = torch.sin(theta), theta.cos_()
        gz = gz.to(sin.dtype)
        g_sin = gz * sin
        grad_inv_beta = (g_sin * sin).sum((0, 2), keepdim=True) if ctx.needs_input_grad[2] else None
        g_sin_cos = g_sin.mul_(cos)
        grad_alpha = (g_sin_cos * u).sum((0, 2), keepdim=True).mul_(2 * inv_beta) if ctx.needs_input_grad[1] else None
        gu = torch.addcmul(gz, g_sin_cos, 2 * alpha * inv_beta, out=g_sin_cos) if ctx.needs_input_grad[0] else None
        grad_x = None
        if gu is not None:
            # Adjoint of the up-sampler, then of the replicate padding.
            gu = gu.to(dtype).view(-1, 2 * g.block)
            gxp = torch.mm(gu, plan.up.t())
            gxp[1:, : g.up_halo].addmm_(gu[:-1], plan.up_halo.t())
            gxp = gxp.view(b, c, -1)
            grad_x = gxp[..., g.x_shift : g.x_shift + t].clone()
            grad_x[..., 0] += gxp[..., : g.x_shift].sum(-1)
            grad_x[..., -1] += gxp[..., g.x_shift + t :].sum(-1)
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_alpha, grad_inv_beta, None, None


def _traceable(x: Tensor, alpha: Tensor, inv_beta: Tensor, plan: _Plan, dtype: torch.dtype) -> Tensor:
    """The same computation out of place, for exporters that record a graph (no writes into slices)."""
    b, c, t = x.shape
    g = plan.g
    xp = _pad(x.to(dtype), plan)
    u = torch.mm(xp, plan.up) + nn.functional.pad(torch.mm(xp[1:, : g.up_halo], plan.up_halo), (0, 0, 0, 1))
    u = u.view(b, c, -1)
    start, stop = _valid(plan)
    first, last = u[..., start : start + 1], u[..., stop - 1 : stop]
    u = torch.cat([first.expand(b, c, start), u[..., start:stop], last.expand(b, c, u.size(-1) - stop)], -1)
    z = (u + torch.sin(u * alpha).square() * inv_beta).to(dtype).view(-1, 2 * g.block)
    y = torch.mm(z, plan.down) + nn.functional.pad(torch.mm(z[1:, : g.down_halo], plan.down_halo), (0, 0, 0, 1))
    return y.view(b, c, -1)[..., :t]


class FastAntiAliasedActivation(AntiAliasedActivation):
    """:class:`AntiAliasedActivation` of a :class:`Snake` or :class:`SnakeBeta`, computed by block matrix products.

    Same arguments, parameters, state-dict keys and function as the reference (within float32 rounding);
    see the module docstring for how. ``(B, C, T) -> (B, C, T)``.
    """

    def __init__(self, activation: nn.Module, kernel_size: int = 12) -> None:
        super().__init__(activation, kernel_size)
        if type(activation) not in (Snake, SnakeBeta):
            raise ValueError(
                f"FastAntiAliasedActivation computes Snake and SnakeBeta, got {type(activation).__name__}; "
                "use AntiAliasedActivation for other activations"
            )
        self.geometry = _Geometry.of(self.kernel_size)
        for name, matrix in zip(("up", "up_halo", "down", "down_halo"), resampling_matrices(self.filter.view(-1))):
            self.register_buffer(f"_{name}", matrix.to(torch.float32), persistent=False)

    def _snake_parameters(self) -> tuple[Tensor, Tensor]:
        """``(alpha, 1 / (beta + eps))``, each ``(1, C, 1)``, as the reference's formula uses them."""
        act = self.act
        alpha = _channel_param(act.alpha, act.logscale)
        beta = _channel_param(act.beta, act.logscale) if isinstance(act, SnakeBeta) else alpha
        return alpha, 1.0 / (beta + _NO_DIV_BY_ZERO)

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        matrices = tuple(m.to(dtype) for m in (self._up, self._up_halo, self._down, self._down_halo))
        plan = _Plan(self.geometry, matrices, x)
        alpha, inv_beta = self._snake_parameters()
        with torch.autocast(x.device.type, enabled=False):
            if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
                return _traceable(x, alpha, inv_beta, plan, dtype)
            return _AntiAliasedSnake.apply(x, alpha, inv_beta, plan, dtype)
