"""LRF-Dyn's token scan as Triton kernels, forward and backward (the CUDA path of `scan`).

The recurrence, its adjoint and the Function's contract are those of `dendritic_scan` (the
numba kernels of the CPU path, whose docstring states the equations): `TritonDendriticScan`
takes `DendriticScan`'s arguments and returns its values. Each kernel is one launch: one
program per (head, block of `BLOCK` columns of the batch x channel axis) runs all n tokens in
order, its state `[k, BLOCK]` in registers, so a training step launches two scan kernels
however many tokens it has, where the loop launches several per token.

The forward pass does the numba kernel's arithmetic in its order: the tridiagonal charge
summed lower, diagonal, upper neighbour then input (the neighbours gathered from the register
tile), the readout a sum over the compartments, and no fused multiply-adds (the kernels are
compiled without them). Under the interpreter its spikes, states and peaks equal the CPU
kernel's bit for bit; compiled for a GPU, the readout's sum runs in the order of Triton's
reduction, equal to rounding. For the backward pass it stores the state before every token and
the potentials, as the CPU kernel does; the backward accumulates the parameter gradients per
column and sums them over columns and blocks at the end.

Without a GPU the kernels run under Triton's interpreter (`TRITON_INTERPRET=1` set before
triton is imported) on CPU tensors: `tests/test_dendritic_scan_triton.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: columns per program (at most): one head's batch x channel columns are split into blocks
BLOCK = 64


@triton.jit
def _scan_forward(u_ptr, diag_ptr, lower_ptr, upper_ptr, gamma_ptr, c_ptr, consts_ptr, x0_ptr,
                  x_ptr, s_ptr, y_ptr, xs_ptr, peak_ptr, n, h, m, seg,
                  K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                  RESETS: tl.constexpr, KEEP: tl.constexpr):  # pragma: no cover - kernel
    """`scan_forward` of `dendritic_scan` for one head and column block. Writes the spikes
    `s[n, h, m]`, the final state `x[h, k, m]`, with `KEEP` the potentials above threshold
    `y[n, h, m]` and the state before each token `xs[n, h, k, m]`, and this block's largest
    |state| at the end of every `seg` tokens into `peak[p, h, blocks]`."""
    hh = tl.program_id(0)
    blk = tl.program_id(1)
    blocks = tl.num_programs(1)
    rows = tl.arange(0, KP)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < K
    cmask = cols < m
    smask = rmask[:, None] & cmask[None, :]
    par = hh * K + rows
    d = tl.load(diag_ptr + par, mask=rmask, other=0.0)[:, None]
    # lower[0] and upper[k-1] are not in A: zero, so that the gathers below wrap harmlessly
    lo = tl.load(lower_ptr + par, mask=rmask & (rows >= 1), other=0.0)[:, None]
    up = tl.load(upper_ptr + par, mask=rows + 1 < K, other=0.0)[:, None]
    ga = tl.load(gamma_ptr + par, mask=rmask, other=0.0)[:, None]
    c = tl.load(c_ptr + par, mask=rmask, other=0.0)[:, None]
    soma = (rows == 0)[:, None]
    below = tl.broadcast_to(tl.maximum(rows - 1, 0)[:, None], (KP, BLOCK))  # row r-1
    above = tl.broadcast_to(tl.minimum(rows + 1, KP - 1)[:, None], (KP, BLOCK))  # row r+1
    theta = tl.load(consts_ptr)
    state = par[:, None] * m + cols[None, :]  # offsets of this tile in [h, k, m]
    x = tl.load(x0_ptr + state, mask=smask, other=0.0)
    token_stride = h.to(tl.int64) * m
    for i in range(n):
        tok = i * token_stride + hh * m  # offset of u[i, hh, 0]
        if KEEP:
            tl.store(xs_ptr + i * token_stride * K + state, x, mask=smask)
        uv = tl.load(u_ptr + tok + cols, mask=cmask, other=0.0)
        # the charge in the CPU kernel's order, ((lower x[r-1] + diag x[r]) + upper x[r+1])
        # + gamma u; the neighbours are gathered rows (their zero coefficients at the ends
        # make the wrapped-around gathers add exact zeros)
        x = (lo * tl.gather(x, below, 0) + d * x + up * tl.gather(x, above, 0)
             + ga * uv[None, :])
        # the readout c . x: a sum over rows, taken in row order as the CPU kernel does
        y = tl.sum(c * x, axis=0) - theta
        fired = y >= 0
        tl.store(s_ptr + tok + cols, fired.to(x.dtype), mask=cmask)
        if KEEP:
            tl.store(y_ptr + tok + cols, y, mask=cmask)
        if RESETS:
            x = tl.where(soma & fired[None, :], x - theta, x)
        if (i + 1) % seg == 0:
            peak = tl.max(tl.max(tl.where(smask, tl.abs(x), 0.0), axis=1), axis=0)
            tl.store(peak_ptr + ((i + 1) // seg - 1) * h * blocks + hh * blocks + blk, peak)
    tl.store(x_ptr + state, x, mask=smask)


@triton.jit
def _scan_backward(gs_ptr, gx_ptr, u_ptr, diag_ptr, lower_ptr, upper_ptr, gamma_ptr, c_ptr,
                   consts_ptr, xs_ptr, y_ptr, gu_ptr, gx0_ptr, gpar_ptr, n, h, m,
                   K: tl.constexpr, KP: tl.constexpr,
                   BLOCK: tl.constexpr):  # pragma: no cover - kernel
    """`scan_backward` of `dendritic_scan` for one head and column block: writes `g_u` and
    `g_x0`, and this block's sums of the gradients of (diag, lower, upper, gamma, c) into
    `gpar[5, h, blocks, k]`."""
    hh = tl.program_id(0)
    blk = tl.program_id(1)
    blocks = tl.num_programs(1)
    rows = tl.arange(0, KP)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < K
    cmask = cols < m
    smask = rmask[:, None] & cmask[None, :]
    par = hh * K + rows
    d = tl.load(diag_ptr + par, mask=rmask, other=0.0)[:, None]
    has_lo = (rows >= 1)[:, None]
    has_up = (rows + 1 < K)[:, None]
    lo = tl.load(lower_ptr + par, mask=rmask & (rows >= 1), other=0.0)[:, None]
    up = tl.load(upper_ptr + par, mask=rows + 1 < K, other=0.0)[:, None]
    ga = tl.load(gamma_ptr + par, mask=rmask, other=0.0)[:, None]
    c = tl.load(c_ptr + par, mask=rmask, other=0.0)[:, None]
    # A^T's off-diagonals: (A^T)[r, r+1] = lower[r+1], (A^T)[r, r-1] = upper[r-1]
    lo_next = tl.load(lower_ptr + par + 1, mask=rows + 1 < K, other=0.0)[:, None]
    up_prev = tl.load(upper_ptr + par - 1, mask=rmask & (rows >= 1), other=0.0)[:, None]
    below = tl.broadcast_to(tl.maximum(rows - 1, 0)[:, None], (KP, BLOCK))
    above = tl.broadcast_to(tl.minimum(rows + 1, KP - 1)[:, None], (KP, BLOCK))
    alpha = tl.load(consts_ptr + 1)
    state = par[:, None] * m + cols[None, :]
    gx = tl.load(gx_ptr + state, mask=smask, other=0.0)
    acc_d = tl.zeros([KP, BLOCK], gx.dtype)
    acc_lo = tl.zeros([KP, BLOCK], gx.dtype)
    acc_up = tl.zeros([KP, BLOCK], gx.dtype)
    acc_g = tl.zeros([KP, BLOCK], gx.dtype)
    acc_c = tl.zeros([KP, BLOCK], gx.dtype)
    token_stride = h.to(tl.int64) * m
    for t in range(n):
        i = n - 1 - t
        tok = i * token_stride + hh * m
        xv = tl.load(xs_ptr + i * token_stride * K + state, mask=smask, other=0.0)
        xdn = tl.where(has_lo, tl.gather(xv, below, 0), 0.0)  # x[r-1]
        xup = tl.where(has_up, tl.gather(xv, above, 0), 0.0)  # x[r+1]
        uv = tl.load(u_ptr + tok + cols, mask=cmask, other=0.0)
        yv = tl.load(y_ptr + tok + cols, mask=cmask, other=0.0)
        sg = 1.0 / (1.0 + tl.exp(-alpha * yv))
        gy = tl.load(gs_ptr + tok + cols, mask=cmask, other=0.0) * alpha * sg * (1.0 - sg)
        gxn = gx + c * gy[None, :]  # gradient of the charged state (the reset is detached)
        pre = lo * xdn + d * xv + up * xup + ga * uv[None, :]  # the charged state
        tl.store(gu_ptr + tok + cols, tl.sum(ga * gxn, axis=0), mask=cmask)
        acc_c += gy[None, :] * pre
        acc_g += gxn * uv[None, :]
        acc_d += gxn * xv
        acc_lo += gxn * xdn
        acc_up += gxn * xup
        # gx = A^T gxn
        gx = d * gxn + lo_next * tl.gather(gxn, above, 0) + up_prev * tl.gather(gxn, below, 0)
    tl.store(gx0_ptr + state, gx, mask=smask)
    out = gpar_ptr + (hh * blocks + blk) * K + rows
    part = h * blocks * K  # one [h, blocks, k] slab per parameter
    tl.store(out, tl.sum(acc_d, axis=1), mask=rmask)
    tl.store(out + part, tl.sum(acc_lo, axis=1), mask=rmask)
    tl.store(out + 2 * part, tl.sum(acc_up, axis=1), mask=rmask)
    tl.store(out + 3 * part, tl.sum(acc_g, axis=1), mask=rmask)
    tl.store(out + 4 * part, tl.sum(acc_c, axis=1), mask=rmask)


def _launch(k: int, m: int) -> dict:
    """Grid-independent launch arguments for `k` compartments and `m` columns."""
    block = min(BLOCK, triton.next_power_of_2(max(m, 16)))
    # no fused multiply-adds: the forward rounds every product and sum as the CPU kernel does
    return {"K": k, "KP": triton.next_power_of_2(k), "BLOCK": block, "num_warps": 2,
            "enable_fp_fusion": False}


class TritonDendriticScan(torch.autograd.Function):
    """`DendriticScan` (same arguments, same returns, `peaks` filled in place) as Triton
    kernels, for CUDA tensors (and CPU tensors under Triton's interpreter)."""

    @staticmethod
    def forward(ctx, u: Tensor, diag: Tensor, lower: Tensor, upper: Tensor,  # type: ignore[override]
                gamma: Tensor, c: Tensor, x0: Tensor, theta: float, alpha: float, resets: bool,
                peaks: Tensor) -> tuple[Tensor, Tensor]:
        u, diag, lower, upper, gamma, c, x0 = (
            t.detach().to(u.dtype).contiguous() for t in (u, diag, lower, upper, gamma, c, x0))
        n, h, m = u.shape
        k = diag.shape[1]
        launch = _launch(k, m)
        blocks = triton.cdiv(m, launch["BLOCK"])
        grad = any(ctx.needs_input_grad[:7])
        s = torch.empty_like(u)
        x = torch.empty_like(x0)
        y = torch.empty_like(u) if grad else s  # `s` stands in for the buffers not written
        xs = u.new_empty((n, h, k, m)) if grad else s
        steps = peaks.shape[0]
        part = u.new_zeros((max(steps, 1), h, blocks))
        # theta and alpha in the tensors' dtype (a Python float would be passed as float32)
        consts = torch.tensor([theta, alpha], dtype=u.dtype, device=u.device)
        _scan_forward[(h, blocks)](u, diag, lower, upper, gamma, c, consts, x0, x, s, y, xs,
                                   part, n, h, m, n // steps if steps else n + 1,
                                   RESETS=bool(resets), KEEP=grad, **launch)
        if steps:
            torch.amax(part, dim=2, out=peaks)
        if grad:
            ctx.save_for_backward(u, diag, lower, upper, gamma, c, consts, xs, y)
        return s, x

    @staticmethod
    def backward(ctx, g_s: Tensor | None, g_x: Tensor | None):  # type: ignore[override]
        u, diag, lower, upper, gamma, c, consts, xs, y = ctx.saved_tensors
        n, h, m = u.shape
        k = diag.shape[1]
        g_s = torch.zeros_like(u) if g_s is None else g_s.to(u.dtype).contiguous()
        g_x = xs.new_zeros(xs.shape[1:]) if g_x is None else g_x.to(u.dtype).contiguous()
        launch = _launch(k, m)
        blocks = triton.cdiv(m, launch["BLOCK"])
        g_u = torch.empty_like(u)
        g_x0 = torch.empty_like(g_x)
        g_par = u.new_empty((5, h, blocks, k))
        _scan_backward[(h, blocks)](g_s, g_x, u, diag, lower, upper, gamma, c, consts, xs, y,
                                    g_u, g_x0, g_par, n, h, m, **launch)
        g_diag, g_lower, g_upper, g_gamma, g_c = g_par.sum(dim=2).unbind(0)
        return g_u, g_diag, g_lower, g_upper, g_gamma, g_c, g_x0, None, None, None, None
