"""LRF-Dyn's token scan as one compiled loop, forward and backward (the CPU path of `scan`).

`DendriticCore.scan` runs, per head and channel column, the charge-fire-reset recurrence over
the N tokens of a timestep:

    x_n = A x'_{n-1} + gamma u_n      charge (x: k compartments)
    y_n = c . x_n - theta             soma potential above threshold
    s_n = [y_n >= 0]                  fire; surrogate gradient alpha sg(alpha y)(1 - sg(alpha y))
    x'_n = x_n - theta e_0 s_n        subtractive reset of the soma, detached for the gradient

Written with torch operations this is a Python loop of N small batched matmuls per timestep
(thousands of kernel launches per training step); here it is one numba loop per direction.
`DendriticScan` is a `torch.autograd.Function` whose backward is the exact adjoint of that
recurrence, A being tridiagonal (the reset contributes no gradient, as `s.detach()` makes it
in the loop), so its gradients equal autograd's through the loop
(`tests/test_dendritic_scan.py`). On CUDA the same Function runs as Triton kernels
(`dendritic_scan_triton`); `dendritic_scan` checks the arguments once and picks the kernel.
The loop in `DendriticCore.scan_loop` stays the reference, and the path for other devices.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from numba import njit
from torch import Tensor


@njit(cache=True, nogil=True)
def _charge(diag, lower, upper, gamma, xv, u, out):  # pragma: no cover - compiled
    """`out = A xv + gamma u` for one head: `A` tridiagonal (`diag[k]`, `lower[r] = A[r, r-1]`,
    `upper[r] = A[r, r+1]`), state `xv[k, m]`, input `u[m]`; summed in the column order of
    `A @ xv` (the zero entries of A add exact zeros)."""
    k, m = xv.shape
    for r in range(k):
        dr, gr = diag[r], gamma[r]
        if r > 0 and r < k - 1:
            lo, up = lower[r], upper[r]
            for col in range(m):
                out[r, col] = (lo * xv[r - 1, col] + dr * xv[r, col] + up * xv[r + 1, col]
                               + gr * u[col])
        elif r > 0:
            lo = lower[r]
            for col in range(m):
                out[r, col] = lo * xv[r - 1, col] + dr * xv[r, col] + gr * u[col]
        elif r < k - 1:
            up = upper[r]
            for col in range(m):
                out[r, col] = dr * xv[r, col] + up * xv[r + 1, col] + gr * u[col]
        else:
            for col in range(m):
                out[r, col] = dr * xv[r, col] + gr * u[col]


@njit(cache=True, nogil=True)
def scan_forward(u, diag, lower, upper, gamma, c, theta, x0, resets, s_out, y_out, xs,
                 peaks):  # pragma: no cover - compiled
    """Forward scan. `u[n, h, m]`; per head `diag, lower, upper, gamma, c` `[h, k]`; state
    `x0[h, k, m]`. Writes spikes `s_out[n, h, m]`, potentials above threshold
    `y_out[n, h, m]`, the state before each token `xs[n, h, k, m]` (for the backward pass;
    0 rows when not needed) and, for `peaks[p, h]` (zeros, p > 0 rows), the largest |state|
    of each head after every `n / p` tokens (the end of each timestep); returns the final
    state `[h, k, m]`. Columns run innermost, so the compiler vectorises across them."""
    n, h, m = u.shape
    k = diag.shape[1]
    keep = xs.shape[0] == n
    seg = n // peaks.shape[0] if peaks.shape[0] else n + 1
    x = x0.copy()
    nxt = np.empty((k, m), x0.dtype)
    for hh in range(h):
        xv = x[hh]
        ch = c[hh]
        for i in range(n):
            if keep:
                xs[i, hh] = xv
            _charge(diag[hh], lower[hh], upper[hh], gamma[hh], xv, u[i, hh], nxt)
            yv = y_out[i, hh]
            for col in range(m):
                yv[col] = ch[0] * nxt[0, col]
            for j in range(1, k):
                cj = ch[j]
                for col in range(m):
                    yv[col] += cj * nxt[j, col]
            for col in range(m):
                y = yv[col] - theta
                yv[col] = y
                fired = y >= 0
                s_out[i, hh, col] = 1 if fired else 0
                if resets and fired:
                    nxt[0, col] -= theta  # == theta * s, exactly
            xv[:] = nxt
            if (i + 1) % seg == 0:
                p = (i + 1) // seg - 1
                peaks[p, hh] = max(peaks[p, hh], np.abs(xv).max())
    return x


@njit(cache=True, nogil=True)
def scan_backward(g_s, g_x, u, diag, lower, upper, gamma, c, alpha, xs, y,
                  g_u, g_diag, g_lower, g_upper, g_gamma, g_c, g_x0):  # pragma: no cover
    """Adjoint of `scan_forward`: from the gradients of the spikes `g_s[n, h, m]` and of the
    final state `g_x[h, k, m]`, accumulate those of `u`, the tridiagonal of A, `gamma`, `c`
    and `x0` (the reset is detached: it passes the state's gradient through unchanged)."""
    n, h, m = u.shape
    k = diag.shape[1]
    gxn = np.empty((k, m), g_x.dtype)
    pre = np.empty((k, m), g_x.dtype)
    gy = np.empty(m, g_x.dtype)
    for hh in range(h):
        gx = g_x[hh].copy()
        dg, lo, up, ga, ch = diag[hh], lower[hh], upper[hh], gamma[hh], c[hh]
        for i in range(n - 1, -1, -1):
            xv = xs[i, hh]
            ui = u[i, hh]
            for col in range(m):
                sg = 1.0 / (1.0 + np.exp(-alpha * y[i, hh, col]))
                gy[col] = g_s[i, hh, col] * alpha * sg * (1.0 - sg)
            for r in range(k):
                for col in range(m):
                    gxn[r, col] = gx[r, col] + ch[r] * gy[col]
            _charge(dg, lo, up, ga, xv, ui, pre)
            for col in range(m):
                g_u[i, hh, col] = 0
            for r in range(k):
                acc_c = 0.0
                acc_g = 0.0
                acc_d = 0.0
                for col in range(m):
                    acc_c += gy[col] * pre[r, col]
                    acc_g += gxn[r, col] * ui[col]
                    acc_d += gxn[r, col] * xv[r, col]
                    g_u[i, hh, col] += ga[r] * gxn[r, col]
                g_c[hh, r] += acc_c
                g_gamma[hh, r] += acc_g
                g_diag[hh, r] += acc_d
                if r > 0:
                    acc = 0.0
                    for col in range(m):
                        acc += gxn[r, col] * xv[r - 1, col]
                    g_lower[hh, r] += acc
                if r < k - 1:
                    acc = 0.0
                    for col in range(m):
                        acc += gxn[r, col] * xv[r + 1, col]
                    g_upper[hh, r] += acc
            for j in range(k):  # gx = A^T gxn
                for col in range(m):
                    acc = dg[j] * gxn[j, col]
                    if j + 1 < k:
                        acc += lo[j + 1] * gxn[j + 1, col]
                    if j > 0:
                        acc += up[j - 1] * gxn[j - 1, col]
                    gx[j, col] = acc
        g_x0[hh] = gx


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy())


class DendriticScan(torch.autograd.Function):
    """`(s[n, h, m], x_final[h, k, m]) = scan(u[n, h, m], diag, lower, upper, gamma, c [h, k],
    x0[h, k, m])` on the CPU, with the surrogate gradient of `spike_ge` (sigmoid, `alpha`)."""

    @staticmethod
    def forward(ctx, u: Tensor, diag: Tensor, lower: Tensor, upper: Tensor,  # type: ignore[override]
                gamma: Tensor, c: Tensor, x0: Tensor, theta: float, alpha: float, resets: bool,
                peaks: Tensor) -> tuple[Tensor, Tensor]:
        arrays = [_np(t) for t in (u, diag, lower, upper, gamma, c, x0)]
        un = arrays[0]
        n, h, m = un.shape
        dtype = un.dtype
        s = np.empty((n, h, m), dtype)
        y = np.empty((n, h, m), dtype)
        grad = any(ctx.needs_input_grad[:7])
        xs = np.empty((n if grad else 0, h, diag.shape[1], m), dtype)
        x = scan_forward(un, *arrays[1:6], dtype.type(theta), arrays[6], bool(resets), s, y, xs,
                         peaks.numpy())
        if grad:
            ctx.arrays = (*arrays[:6], xs, y)
            ctx.alpha = float(alpha)
        return torch.from_numpy(s), torch.from_numpy(x)

    @staticmethod
    def backward(ctx, g_s: Tensor, g_x: Tensor):  # type: ignore[override]
        un, diag, lower, upper, gamma, c, xs, y = ctx.arrays
        dtype = un.dtype
        g_s = np.zeros(un.shape, dtype) if g_s is None else _np(g_s.to(_TORCH[dtype.name]))
        g_x = np.zeros(xs.shape[1:], dtype) if g_x is None else _np(g_x.to(_TORCH[dtype.name]))
        g_u = np.empty_like(un)
        g_params = [np.zeros_like(p) for p in (diag, lower, upper, gamma, c)]
        g_x0 = np.empty_like(g_x)
        scan_backward(g_s, g_x, un, diag, lower, upper, gamma, c, dtype.type(ctx.alpha), xs, y,
                      g_u, *g_params, g_x0)
        out = tuple(torch.from_numpy(g) for g in (g_u, *g_params, g_x0))
        return (*out, None, None, None, None)


_TORCH = {"float32": torch.float32, "float64": torch.float64}


Kernel = Literal["numba", "triton"]


@functools.cache
def triton_usable() -> bool:
    """Whether triton imports and has what the kernels use (`tl.gather`: Triton >= 3.3)."""
    try:
        import triton.language as tl
    except ImportError:  # not installed, or no usable build for this platform
        return False
    return hasattr(tl, "gather")


def scan_kernel(device: torch.device) -> Kernel | None:
    """The compiled scan for tensors on `device`: numba on the CPU, Triton on CUDA where
    `triton_usable()`, else None (the caller runs the loop)."""
    if device.type == "cpu":
        return "numba"
    if device.type == "cuda" and triton_usable():
        return "triton"
    return None


def dendritic_scan(u: Tensor, diag: Tensor, lower: Tensor, upper: Tensor, gamma: Tensor,
                   c: Tensor, x0: Tensor, theta: float, alpha: float, resets: bool = True,
                   steps: int = 0, kernel: Kernel | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The compiled scan (module docstring): `u[n, h, m]` -> `(s[n, h, m], x[h, k, m],
    peaks[steps, h])`. A is tridiagonal per head: `diag`, `lower[r] = A[r, r-1]`,
    `upper[r] = A[r, r+1]` (`[h, k]`). The n tokens are `steps` timesteps of n / steps
    tokens, and `peaks` holds each head's largest |state| at the end of each (no rows for
    `steps=0`). `kernel` defaults to `scan_kernel(u.device)`; "triton" also runs CPU tensors
    under `TRITON_INTERPRET=1` (how the Triton kernels are tested without a GPU)."""
    if steps and u.shape[0] % steps:
        raise ValueError(f"{u.shape[0]} tokens are not {steps} timesteps of equal length")
    if u.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the compiled scan runs float32 or float64, got {u.dtype}")
    kernel = kernel or scan_kernel(u.device)
    if kernel == "numba":
        function: type[torch.autograd.Function] = DendriticScan
    elif kernel == "triton":
        from spikestream.pipeline.network.attention.dendritic_scan_triton import (
            TritonDendriticScan,
        )

        function = TritonDendriticScan
    else:
        raise ValueError(f"no compiled scan for {u.device} (kernel={kernel!r})")
    peaks = torch.zeros(steps, u.shape[1], dtype=u.dtype, device=u.device)
    params = (u, diag, lower, upper, gamma, c, x0)
    if not torch.is_grad_enabled():  # a parameter passed as it is still requires grad: the
        params = tuple(t.detach() for t in params)  # forward would keep every token's state
    s, x = function.apply(*params, theta, alpha, resets, peaks)
    return s, x, peaks
