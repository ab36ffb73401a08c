"""Attention mechanisms in the numba engine: kernels, and the registry that says which
mechanism runs on which kernel and how its weights are packed (`NUMBA_ATTENTION`).

Every attention kernel has one signature, `kernel(s, aw, wi, alif, li, ai, af, v, v_new, vi,
gh, gw) -> y`: input spike tokens `s[N, D]`, the block's packed attention weights `aw[wi:]`
(2-D float32 arrays: linear weights `[D_in, D_out]`, norms `[2, C]`, other parameters),
neurons `alif[li:]` (`(tau, beta, v_th)`), integer and float options `ai`, `af`, and the
attention's own state leaves `v[vi:]` (in the order of its `init_state`) updated into
`v_new[vi:]`; `y[N, D]` is the output after the projection `BN(W_o .)`. `attend` dispatches
on the kernel code. A mechanism joins the engine with a kernel and a `@register_numba(key)`
packer: the engine and `unsupported` read the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit
from torch import nn

from spikestream.pipeline.engines.numba_kernels import ZERO, lif_tokens, proj, proj_fire
from spikestream.pipeline.network.attention import Attention
from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore
from spikestream.pipeline.network.neurons import LIF

KERNEL_SSA, KERNEL_SDSA, KERNEL_LRF_DYN = 0, 1, 2


# --- kernels ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def ssa_scores(q, k, v, heads, scale):  # pragma: no cover - compiled
    """Spikformer SSA before its neuron: `scale * (Q_h K_h^T) V_h` per head, for spike tokens
    `q, k, v[N, D]`. Sums of spikes are small integers, exact in any order; the product by
    `scale` rounds once, as in `(q @ k^T) @ v * scale`."""
    n, d_all = q.shape
    d = d_all // heads
    out = np.zeros((n, d_all), np.float32)
    counts = np.empty(n, np.float32)
    active = np.empty(d, np.int64)
    for head in range(heads):
        lo = head * d
        for i in range(n):
            na = 0
            for j in range(lo, lo + d):
                if q[i, j] != 0:
                    active[na] = j
                    na += 1
            if na == 0:
                continue
            for m in range(n):
                total = ZERO
                for a in range(na):
                    total += q[i, active[a]] * k[m, active[a]]
                counts[m] = total
            row = out[i]
            for m in range(n):
                qk = counts[m]
                if qk == 0:
                    continue
                for o in range(lo, lo + d):
                    row[o] += qk * v[m, o]
            for o in range(lo, lo + d):
                row[o] = row[o] * scale
    return out


@njit(cache=True, nogil=True)
def token_max_pool_3s1(x, gh, gw):  # pragma: no cover - compiled
    """3x3 stride-1 max-pool (padding 1) of tokens `x[N, D]` over their `gh x gw` grid."""
    n, d = x.shape
    out = np.empty((n, d), np.float32)
    for gy in range(gh):
        for gx in range(gw):
            row = out[gy * gw + gx]
            row[:] = x[gy * gw + gx]
            for y in range(max(gy - 1, 0), min(gy + 2, gh)):
                for xx in range(max(gx - 1, 0), min(gx + 2, gw)):
                    other = x[y * gw + xx]
                    for o in range(d):
                        row[o] = max(row[o], other[o])
    return out


@njit(cache=True, nogil=True)
def sdsa_mask(q, k, v, lif, va, va_new):  # pragma: no cover - compiled
    """Spike-driven SDSA before its projection: per channel the token sum of `k * v` fires
    the attention neuron (membranes `va, va_new[1, D]`), whose spike masks `q[N, D]`."""
    n, d = q.shape
    kv = np.zeros((1, d), np.float32)
    for i in range(n):
        for o in range(d):
            kv[0, o] += k[i, o] * v[i, o]
    s = np.empty((1, d), np.float32)
    lif_tokens(kv, lif, va, va_new, s)
    out = np.empty((n, d), np.float32)
    for i in range(n):
        for o in range(d):
            out[i, o] = q[i, o] * s[0, o]
    return out


@njit(cache=True, nogil=True)
def local_rf(x, w, dilations, gh, gw):  # pragma: no cover - compiled
    """`LocalRF`: the sum of depthwise 3x3 convolutions (padding = dilation) of tokens
    `x[N, D]` on their `gh x gw` grid, scattered from the non-zero inputs;
    `w[di * 9 + ky * 3 + kx, D]` is dilation `di`'s kernel."""
    n, d = x.shape
    out = np.zeros((n, d), np.float32)
    active = np.empty(d, np.int64)
    for p in range(n):
        na = 0
        for c in range(d):
            active[na] = c
            na += x[p, c] != 0
        if na == 0:
            continue
        py, px = p // gw, p % gw
        for di in range(dilations.shape[0]):
            dil = dilations[di]
            for ky in range(3):
                oy = py - (ky - 1) * dil  # the output whose window puts this input at ky
                if oy < 0 or oy >= gh:
                    continue
                for kx in range(3):
                    ox = px - (kx - 1) * dil
                    if ox < 0 or ox >= gw:
                        continue
                    row, wr = out[oy * gw + ox], w[di * 9 + ky * 3 + kx]
                    for a in range(na):
                        c = active[a]
                        row[c] += x[p, c] * wr[c]
    return out


@njit(cache=True, nogil=True)
def dendritic_scan(u, x, x_new, decay, lower, upper, gamma, readout, theta,
                   heads):  # pragma: no cover - compiled
    """`DendriticCore.step`: the N tokens of `u[N, D]` in order through each channel's k
    compartments, `X = A X + Gamma u`, `y = C . X`, fire `[y - theta >= 0]`, subtract theta
    from the soma; state `x, x_new[heads * k, d]`, parameters `[heads, k]` (A tridiagonal:
    `decay` on the diagonal, `lower[j] = A[j, j-1]`, `upper[j] = A[j, j+1]`)."""
    n, d_all = u.shape
    d = d_all // heads
    k = decay.shape[1]
    s = np.zeros((n, d_all), np.float32)
    cur = np.empty(k, np.float32)
    nxt = np.empty(k, np.float32)
    for h in range(heads):
        for c in range(d):
            col = h * d + c
            for j in range(k):
                cur[j] = x[h * k + j, c]
            for t in range(n):
                un = u[t, col]
                y = ZERO
                for j in range(k):
                    acc = decay[h, j] * cur[j]
                    if j > 0:
                        acc += lower[h, j] * cur[j - 1]
                    if j < k - 1:
                        acc += upper[h, j] * cur[j + 1]
                    nxt[j] = acc + gamma[h, j] * un
                for j in range(k):
                    cur[j] = nxt[j]
                    y += readout[h, j] * cur[j]
                if y - theta >= 0:
                    s[t, col] = 1.0
                    cur[0] -= theta
            for j in range(k):
                x_new[h * k + j, c] = cur[j]
    return s


@njit(cache=True, nogil=True)
def _qkv(s, aw, wi, alif, li, v, v_new, vi, which):  # pragma: no cover - compiled
    """Q (0), K (1) or V (2) of the shared parts: `SN(BN(W s))`."""
    return proj_fire(s, aw[wi + 2 * which], aw[wi + 2 * which + 1], alif[li + which],
                     v[vi + which], v_new[vi + which])


@njit(cache=True, nogil=True)
def _fire_proj(a, aw, wi, alif, li, v, v_new, vi):  # pragma: no cover - compiled
    """`BN(W_o SN_0.5(a))`: the attention neuron (state leaf 3) and the projection."""
    spikes = np.empty_like(a)
    lif_tokens(a, alif[li + 3], v[vi + 3], v_new[vi + 3], spikes)
    return proj(spikes, aw[wi + 6], aw[wi + 7])


@njit(cache=True, nogil=True)
def attend(code, s, aw, wi, alif, li, ai, af, v, v_new, vi, gh, gw):  # pragma: no cover
    """The attention of kernel `code` (module docstring) on spike tokens `s[N, D]`."""
    sv = _qkv(s, aw, wi, alif, li, v, v_new, vi, 2)
    sk = _qkv(s, aw, wi, alif, li, v, v_new, vi, 1)
    if code == KERNEL_LRF_DYN:
        local = local_rf(sv, aw[wi + 13], ai[2:2 + ai[1]], gh, gw)
        core = dendritic_scan(sk * sv, v[vi + 4], v_new[vi + 4], aw[wi + 8], aw[wi + 9],
                              aw[wi + 10], aw[wi + 11], aw[wi + 12], af[0], ai[0])
        a = _qkv(s, aw, wi, alif, li, v, v_new, vi, 0) * core + local
        return _fire_proj(a, aw, wi, alif, li, v, v_new, vi)
    sq = _qkv(s, aw, wi, alif, li, v, v_new, vi, 0)
    if code == KERNEL_SDSA:
        if ai[1]:
            sk, sv = token_max_pool_3s1(sk, gh, gw), token_max_pool_3s1(sv, gh, gw)
        masked = sdsa_mask(sq, sk, sv, alif[li + 3], v[vi + 3], v_new[vi + 3])
        return proj(masked, aw[wi + 6], aw[wi + 7])
    return _fire_proj(ssa_scores(sq, sk, sv, ai[0], af[0]), aw, wi, alif, li, v, v_new, vi)


# --- packing and the registry ----------------------------------------------------------------
def f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())


def pack_bn(bn: nn.modules.batchnorm._BatchNorm) -> np.ndarray:
    """Eval batch norm as `[alpha; shift]` (`y * alpha + shift`), in float32 as ATen's CPU
    kernel computes it."""
    mean, var = f32(bn.running_mean), f32(bn.running_var)
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))
    gamma = f32(bn.weight) if bn.weight is not None else np.ones_like(mean)
    beta = f32(bn.bias) if bn.bias is not None else np.zeros_like(mean)
    alpha = (invstd * gamma).astype(np.float32)
    return np.stack([alpha, (beta - mean * alpha).astype(np.float32)])


def pack_lif(lif: nn.Module) -> tuple[float, float, float]:
    if not isinstance(lif, LIF):
        raise ValueError(f"numba kernels run LIF neurons only, got {type(lif).__name__}")
    beta = float(lif.beta) if torch.is_tensor(lif.beta) else lif.beta
    return lif.tau, beta, float(lif.threshold)


def pack_proj(p: nn.Module) -> list[np.ndarray]:
    """A `TokenProj` as `[W^T, BN]`."""
    return [f32(p.linear.weight.t()), pack_bn(p.bn)]


@dataclass
class Packed:
    """One attention module's weights for its kernel (module docstring)."""

    arrays: list[np.ndarray]
    neurons: list[tuple[float, float, float]]
    ints: list[int]
    floats: list[float]


@dataclass(frozen=True)
class NumbaAttention:
    """A registry entry: the kernel code, the packer, and a check of a module's options."""

    kernel: int
    pack: Callable[[Attention], Packed]
    check: Callable[[Attention], str | None]


NUMBA_ATTENTION: dict[str, NumbaAttention] = {}


def _runs(attn: Attention) -> str | None:
    return None


def register_numba(key: str, kernel: int, check: Callable[[Attention], str | None] = _runs):
    """Decorator on a packer: attention `key` runs on numba kernel `kernel`."""

    def deco(pack: Callable[[Attention], Packed]) -> Callable[[Attention], Packed]:
        if key in NUMBA_ATTENTION:
            raise ValueError(f"numba attention {key!r} registered twice")
        NUMBA_ATTENTION[key] = NumbaAttention(kernel, pack, check)
        return pack

    return deco


def _shared(attn: Attention) -> Packed:
    """Q, K, V, the output projection and the four neurons (q, k, v, attn) of `SpikingQKV`."""
    arrays = [a for p in (attn.q.proj, attn.k.proj, attn.v.proj, attn.proj) for a in pack_proj(p)]
    neurons = [pack_lif(n) for n in (attn.q.lif, attn.k.lif, attn.v.lif, attn.attn_lif)]
    return Packed(arrays, neurons, [attn.heads], [])


@register_numba("ssa", KERNEL_SSA)
def _pack_ssa(attn: Attention) -> Packed:
    packed = _shared(attn)
    packed.ints.append(0)
    packed.floats.append(attn.scale)
    return packed


@register_numba("sdsa", KERNEL_SDSA)
def _pack_sdsa(attn: Attention) -> Packed:
    packed = _shared(attn)
    packed.ints.append(int(attn.dvs_pool))
    packed.floats.append(0.0)
    return packed


def _core_is_float(attn: Attention) -> str | None:
    if type(attn.core) is not DendriticCore:
        return f"its core is a {type(attn.core).__name__}, not the float DendriticCore"
    return None


@register_numba("lrf_dyn", KERNEL_LRF_DYN, check=_core_is_float)
def _pack_lrf_dyn(attn: Attention) -> Packed:
    packed = _shared(attn)
    core = attn.core
    with torch.no_grad():
        lower, upper = core.couplings()
        packed.arrays += [f32(core.decays()), f32(lower), f32(upper), f32(core.gamma),
                          f32(core.readout())]
        convs = [f32(c.weight[:, 0].permute(1, 2, 0).reshape(9, -1)) for c in attn.local.convs]
    packed.arrays.append(np.ascontiguousarray(np.concatenate(convs)))
    packed.ints += [len(attn.local.dilations), *attn.local.dilations]
    packed.floats.append(float(core.theta))
    return packed
