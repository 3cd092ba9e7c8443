"""The anti-aliased Snake / SnakeBeta of :mod:`melvoc.models.activations`, computed faster, same function.

:class:`FastAntiAliasedActivation` is :class:`~melvoc.models.activations.AntiAliasedActivation` (same
parameters, buffers and state-dict keys) with another ``forward``. The reference resamples each channel
with a depthwise transposed convolution (ATen's slow grouped path) and a strided depthwise convolution,
replicate-pads twice and evaluates the Snake formula in five passes over memory. Here, since every
channel uses the same low-pass:

* **Polyphase up-sampling as a matrix product.** The 2x up-sampler's even and odd outputs are two
  ``K/2``-tap filters of the input. The padded input of all channels is cut into rows of ``BLOCK``
  samples; a ``(rows, BLOCK) @ (BLOCK, 2 BLOCK)`` product plus one for the few samples each row needs
  from the next (a strided view of the same rows, no copy) gives every output, already interleaved.
* **Padding once.** The input is replicate-padded once, far enough that the up-sampled signal covers
  the down-sampler's reach; the down-sampler's replicate padding (of the up-sampled signal) is two
  small in-place copies at its ends instead of a padded copy of the whole signal.
* **Down-sampling as a matrix product** on the same row layout, ``(rows, 2 BLOCK) @ (2 BLOCK, BLOCK)``
  plus the next row's head: the stride and the crop are in the matrix.
* **Snake in four passes** (multiply, ``sin_``, square, ``addcmul``) on one buffer, with
  ``1 / (beta + eps)`` computed once per call for the ``C`` channels instead of a division per sample.
* **A hand-written backward** (:class:`_AntiAliasedSnake`): the transposed products, the adjoints of
  the paddings, and Snake's derivative from the saved ``sin(alpha u)`` and one ``cos``. It keeps the
  up-sampled signal and its sine, about 4 ``C x T`` values, where autograd through the reference
  keeps about 14. It also takes the parameters' own transforms (``exp`` of the stored logarithms,
  ``1 / (beta + eps)``), so an activation is one node of the autograd graph, not seven.
* **Few operator calls.** At the widths most models train (channels 4 to 128, a few thousand samples)
  an activation's cost is mostly the ~100 torch calls of its forward and backward, not their
  arithmetic; in-place ``narrow``/``select`` writes, no copies the next step does not need, and no
  conversions to the dtype a tensor already has. Measured in the generator (width 256, forward and
  backward of an 8192-sample segment, paired against the code before), this and the one-node graph
  made the step 1.085x faster.

Measured against the reference (``benchmarks/bench_bigvgan.py``, README "Benchmarks"): pays on the
CPU. Tried and dropped, for no gain on the CPU: 8, 32 or 64 samples per row; two depthwise
convolutions per resampler instead of the products; ``sin^2 = (1 - cos 2x) / 2`` with the scales moved
into the products (kept for export only, below); ``torch.compile`` of the whole generator, or of
Snake's arithmetic alone (one fused pass, but its OpenMP threads then slow torch's own kernels).

Under tracing (ONNX export, ``torch.jit.trace``) :func:`_traceable` computes the same function as a
graph without writes into slices. Everything is plain torch: it runs on any device, trains, exports,
and traces under ``torch.compile``. Under autocast the products run in the autocast dtype and Snake in
the promoted dtype, as the reference's convolutions and elementwise ops do.
"""

from __future__ import annotations

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
        # zero-stuffing, padding and crop, written out); over both phases o spans [-reach, reach].
        reach = k // 4
        z_shift = 2 * reach  # covers the down-sampler's left reach of k/2 - 1 samples, and is even
        down_offset = z_shift - (k // 2 - 1)
        geometry = cls(
            kernel_size=k,
            block=block,
            x_shift=z_shift // 2 + reach,
            z_shift=z_shift,
            up_taps=2 * reach + 1,
            down_offset=down_offset,
            up_halo=2 * reach,
            down_halo=down_offset + k - 2,
        )
        if geometry.up_halo > block or geometry.down_halo > 2 * block:
            raise ValueError(f"anti-aliasing kernel_size {k} is too long for block {block}")
        return geometry

    def rows(self, length: Any) -> Any:
        """Rows per channel for ``length`` input samples: ``ceil((length + slack) / L)``, which covers the
        up-sampler's reach (``z_shift / 2 + up_taps - 1`` samples past the input) and has a spare row
        (``slack >= L``), so that a row's look into the next one never crosses into another channel
        where it matters. Integer operators only: under tracing ``length`` is a graph value."""
        slack = max(self.z_shift // 2 + self.up_taps - 1, self.block)
        return (length + slack + self.block - 1) // self.block


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
    """Geometry, the four matrices in the compute dtype, and the index arithmetic of one input shape."""

    def __init__(self, geometry: _Geometry, matrices: tuple[Tensor, ...], x: Tensor, dtype: torch.dtype) -> None:
        self.g = geometry
        self.up, self.up_halo, self.down, self.down_halo = matrices
        self.dtype = dtype
        self.batch, self.channels, self.length = x.shape
        self.rows = geometry.rows(self.length)
        self.padded = self.rows * geometry.block  # padded input samples per channel
        self.after = self.padded - geometry.x_shift - self.length  # of them after the input
        # The up-sampled buffer's samples [start, stop) are the 2x signal; the rest is padding.
        self.start, self.stop = geometry.z_shift, geometry.z_shift + 2 * self.length


def _pad(x: Tensor, plan: _Plan) -> Tensor:
    """``(B, C, T) -> (B * C * rows, L)``: replicate padding, ``x_shift`` before and the rest after."""
    b, c, t = x.shape
    g = plan.g
    head, tail = x.narrow(-1, 0, 1).expand(b, c, g.x_shift), x.narrow(-1, t - 1, 1).expand(b, c, plan.after)
    return torch.cat((head, x, tail), -1).view(-1, g.block)


def _rows_times(rows: Tensor, main: Tensor, halo: Tensor) -> Tensor:
    """``rows @ main``, plus each next row's head ``@ halo``: ``(N, L_in) -> (N, L_out)`` (the last row's
    tail is never used)."""
    out = torch.mm(rows, main)
    n = rows.size(0) - 1
    out.narrow(0, 0, n).addmm_(rows.narrow(0, 1, n).narrow(1, 0, halo.size(0)), halo)
    return out


def _rows_times_adjoint(grad: Tensor, main: Tensor, halo: Tensor) -> Tensor:
    """The adjoint of :func:`_rows_times`: ``(N, L_out) -> (N, L_in)``."""
    out = torch.mm(grad, main.t())
    n = grad.size(0) - 1
    out.narrow(0, 1, n).narrow(1, 0, halo.size(0)).addmm_(grad.narrow(0, 0, n), halo.t())
    return out


def _replicate_ends_(z: Tensor, plan: _Plan) -> None:
    """The down-sampler's replicate padding, written over the buffer's ends: ``z (B, C, S)``."""
    start, stop = plan.start, plan.stop
    z.narrow(-1, 0, start).copy_(z.narrow(-1, start, 1))
    z.narrow(-1, stop, z.size(-1) - stop).copy_(z.narrow(-1, stop - 1, 1))


def _gather_ends_(g: Tensor, start: int, stop: int) -> None:
    """The adjoint of replicating samples ``start`` and ``stop - 1`` of ``g (B, C, S)`` over its ends, in
    place: each gets the sum of its copies' gradients (the copies keep theirs; callers drop them)."""
    g.select(-1, start).copy_(g.narrow(-1, 0, start + 1).sum(-1))
    g.select(-1, stop - 1).copy_(g.narrow(-1, stop - 1, g.size(-1) - stop + 1).sum(-1))


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _snake_scales(alpha: Tensor, beta: Optional[Tensor], logscale: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, b, 1 / (b + eps))``, each ``(1, C, 1)``, from the stored ``alpha`` and ``beta`` ``(C,)`` (Snake:
    ``beta`` None, ``b = a``), as the reference's formula uses them."""
    a = _channel_param(alpha, logscale)
    b = a if beta is None else _channel_param(beta, logscale)
    return a, b, b.add(_NO_DIV_BY_ZERO).reciprocal()


def _anti_aliased_snake(
    x: Tensor, alpha: Tensor, inv_beta: Tensor, plan: _Plan, keep: bool = False
) -> tuple[Tensor, Optional[tuple[Tensor, Tensor]]]:
    """``x (B, C, T) -> (B, C, T)``: pad, up-sample to ``u``, ``u + inv_beta sin(alpha u)^2``, replicate the
    ends, down-sample. With ``keep``, also ``(u, sin(alpha u))`` for the backward (in the Snake dtype,
    the reference's promotion of the products' dtype and the parameters')."""
    b, c, t = x.shape
    g = plan.g
    if x.dtype != plan.dtype:
        x = x.to(plan.dtype)
    u = _rows_times(_pad(x, plan), plan.up, plan.up_halo).view(b, c, -1)
    sin = torch.mul(u, alpha).sin_()
    z = torch.mul(sin, sin) if keep else sin.mul_(sin)
    torch.addcmul(u, z, inv_beta, out=z)
    _replicate_ends_(z, plan)
    if z.dtype != plan.dtype:
        z = z.to(plan.dtype)
    y = _rows_times(z.view(-1, 2 * g.block), plan.down, plan.down_halo)
    return y.view(b, c, -1).narrow(-1, 0, t), (u, sin) if keep else None


class _AntiAliasedSnake(torch.autograd.Function):
    """:func:`_anti_aliased_snake` of the stored Snake parameters, with a hand-written backward that also
    takes the parameters' own transforms (``exp`` under ``logscale``, ``1 / (b + eps)``), so the graph
    holds one node per activation."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, alpha: Tensor, beta: Optional[Tensor], logscale: bool, plan: _Plan
    ) -> Tensor:
        a, b, inv_b = _snake_scales(alpha, beta, logscale)
        y, (u, sin) = _anti_aliased_snake(x, a, inv_b, plan, keep=True)
        ctx.save_for_backward(u, sin, a, b, inv_b)
        ctx.plan, ctx.logscale, ctx.x_dtype, ctx.snake = plan, logscale, x.dtype, beta is None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        u, sin, a, b, inv_b = ctx.saved_tensors
        plan: _Plan = ctx.plan
        g = plan.g
        batch, channels, t = plan.batch, plan.channels, plan.length
        need_x, need_alpha, need_beta = ctx.needs_input_grad[:3]
        # Adjoint of the down-sampler (the crop to T, then the block products).
        if grad.dtype != plan.dtype:
            grad = grad.to(plan.dtype)
        gy = nn.functional.pad(grad, (0, plan.padded - t)).view(-1, g.block)
        gz = _rows_times_adjoint(gy, plan.down, plan.down_halo).view(batch, channels, -1)
        if gz.dtype != sin.dtype:
            gz = gz.to(sin.dtype)
        # Adjoint of the replicated ends: their gradients go to the samples they copy.
        start, stop = plan.start, plan.stop
        _gather_ends_(gz, start, stop)
        gz.narrow(-1, 0, start).zero_()
        gz.narrow(-1, stop, gz.size(-1) - stop).zero_()
        # Snake: dz/du = 1 + 2 a ib sin(a u) cos(a u), dz/da = 2 ib u sin cos, dz/d(ib) = sin^2.
        g_sin = gz * sin
        snake = ctx.snake
        grad_a = grad_b = grad_x = None
        if need_beta or (snake and need_alpha):  # d/d(1/(b + eps)) is sin^2; d(1/(b + eps))/db = -ib^2
            grad_b = (g_sin * sin).sum((0, 2), keepdim=True).mul_(inv_b).mul_(inv_b).neg_()
        g_sin_cos = g_sin.mul_(torch.mul(u, a).cos_())
        if need_alpha:
            grad_a = (g_sin_cos * u).sum((0, 2), keepdim=True).mul_(inv_b).mul_(2)
            if snake:  # Snake's b is a
                grad_a, grad_b = grad_a.add_(grad_b), None
        if need_x:
            gu = torch.addcmul(gz, g_sin_cos, a * inv_b, value=2, out=g_sin_cos)
            if gu.dtype != plan.dtype:
                gu = gu.to(plan.dtype)
            # Adjoint of the up-sampler, then of the replicate padding.
            gxp = _rows_times_adjoint(gu.view(-1, 2 * g.block), plan.up, plan.up_halo).view(batch, channels, -1)
            _gather_ends_(gxp, g.x_shift, g.x_shift + t)
            grad_x = gxp.narrow(-1, g.x_shift, t)
            if grad_x.dtype != ctx.x_dtype:
                grad_x = grad_x.to(ctx.x_dtype)
        # Stored as logarithms: exp's derivative is itself.
        grad_alpha = None if grad_a is None else (grad_a.mul_(a) if ctx.logscale else grad_a).view(-1)
        grad_beta = None if grad_b is None else (grad_b.mul_(b) if ctx.logscale else grad_b).view(-1)
        return grad_x, grad_alpha, grad_beta, None, None


def _product_traced(rows: Tensor, main: Tensor, halo: Tensor) -> Tensor:
    """``rows @ main`` plus each next row's head ``@ halo``, out of place: one Gemm and one Gemm with addend."""
    head = nn.functional.pad(rows[1:, : halo.size(0)], (0, 0, 0, 1))
    return torch.addmm(torch.mm(rows, main), head, halo)


def _traceable(x: Tensor, alpha: Tensor, inv_beta: Tensor, plan: _Plan, channels: int) -> Tensor:
    """The same function as a graph for exporters (ONNX, ``torch.jit.trace``): no writes into slices, the
    length a graph value, and few passes, since ONNX Runtime runs each node on its own.

    ``u + ib sin^2(a u) = u + c - c cos(2 a u)`` with ``c = ib / 2``; ``2a`` scales the input before the
    (linear) up-sampler and ``1 / (2a)`` the output, and ``c`` times the low-pass's gain at DC (1 up to
    the taps' rounding) is added after the down-sampler. So the 2x signal takes four passes (crop and
    replicate-pad the ends, cos, multiply-add). Channels with ``a = 0`` (where the reference gives ``u``)
    use ``2a -> 1``, ``c -> 0``."""
    g = plan.g
    t = x.shape[-1]
    nonzero = alpha != 0
    scale = torch.where(nonzero, 2 * alpha, torch.ones_like(alpha))
    half = torch.where(nonzero, 0.5 * inv_beta, torch.zeros_like(inv_beta))
    xp = nn.functional.pad(x * scale, (g.x_shift, plan.after), mode="replicate").reshape(-1, g.block)
    v = _product_traced(xp, plan.up, plan.up_halo).reshape(x.shape[0], channels, -1)
    start, stop = plan.start, plan.stop
    v = nn.functional.pad(v[..., start:stop], (start, v.shape[-1] - stop), mode="replicate")
    z = torch.addcmul(v, torch.cos(v), -scale * half).reshape(-1, 2 * g.block)
    y = _product_traced(z, plan.down, plan.down_halo).reshape(x.shape[0], channels, -1)[..., :t]
    return torch.addcmul(half * plan.down[:, 0].sum(), y, 1.0 / scale)


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

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        matrices = (self._up, self._up_halo, self._down, self._down_halo)
        if matrices[0].dtype != dtype:
            matrices = tuple(m.to(dtype) for m in matrices)
        plan = _Plan(self.geometry, matrices, x, dtype)
        act = self.act
        alpha, beta, logscale = act.alpha, act.beta if isinstance(act, SnakeBeta) else None, act.logscale
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            a, _, inv_b = _snake_scales(alpha, beta, logscale)
            return _traceable(x, a, inv_b, plan, alpha.numel())
        if torch.is_grad_enabled() and (
            x.requires_grad or alpha.requires_grad or (beta is not None and beta.requires_grad)
        ):
            return _AntiAliasedSnake.apply(x, alpha, beta, logscale, plan)
        a, _, inv_b = _snake_scales(alpha, beta, logscale)
        return _anti_aliased_snake(x, a, inv_b, plan)[0]
