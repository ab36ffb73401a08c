"""Numba kernels of the attention mechanisms, one per kernel code, and `attend`, which
dispatches on the code (`numba_attention` says which mechanism uses which code).

Every kernel takes input spike tokens `s[N, D]`, the block's packed attention arrays from
`mat(aw, wi)` on (`numba_kernels.pack_arrays`: linear weights `[D_in, D_out]`, norms
`[3, C]`, other parameters as 2-D float32 arrays), neurons `alif[li:]` (`(tau, beta, v_th)`),
integer and float options `ai`, `af`, and
the attention's own state leaves from leaf `vi` of the flat states `st = (state, new, layout)`
(in the order of its `init_state`, each as `[rows, last axis]`: `old(st, i)` is read,
`new(st, i)` written), and the workspace `ws` its scratch comes from (`numba_kernels.take`),
and returns `y[N, D]` after the output projection `BN(W_o .)`, taken from `ws`.
The mechanisms built on `SpikingQKV` pack `[W_q, BN_q, W_k, BN_k, W_v, BN_v, W_o, BN_o]`
first, neurons q, k, v (and attn), state q, k, v (and attn) first.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from spikestream.pipeline.engines.numba_kernels import (
    ONE,
    ZERO,
    lif_tokens,
    mark,
    mat,
    new,
    old,
    proj,
    proj_fire,
    release,
    take,
    take_ints,
    take_zeros,
)

(KERNEL_SSA, KERNEL_SDSA, KERNEL_LRF_DYN, KERNEL_LRF_SSA, KERNEL_A2OS2A, KERNEL_SSSA,
 KERNEL_STATTEN) = range(7)


@njit(cache=False, nogil=True)
def ssa_scores(q, k, v, heads, scale, ws):  # pragma: no cover - compiled
    """Spikformer SSA before its neuron: `scale * (Q_h K_h^T) V_h` per head, for spike tokens
    `q, k, v[N, D]`. Sums of spikes are small integers, exact in any order; the product by
    `scale` rounds once, as in `(q @ k^T) @ v * scale`."""
    n, d_all = q.shape
    d = d_all // heads
    out = take_zeros(ws, n, d_all)
    tops = mark(ws)
    counts = take(ws, 1, n)[0]
    active = take_ints(ws, d)
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
    release(ws, tops)
    return out


@njit(cache=False, nogil=True)
def token_max_pool_3s1(x, gh, gw, ws):  # pragma: no cover - compiled
    """3x3 stride-1 max-pool (padding 1) of tokens `x[N, D]` over their `gh x gw` grid."""
    n, d = x.shape
    out = take(ws, n, d)
    for gy in range(gh):
        for gx in range(gw):
            row = out[gy * gw + gx]
            here = x[gy * gw + gx]
            for o in range(d):
                row[o] = here[o]
            for y in range(max(gy - 1, 0), min(gy + 2, gh)):
                for xx in range(max(gx - 1, 0), min(gx + 2, gw)):
                    other = x[y * gw + xx]
                    for o in range(d):
                        row[o] = max(row[o], other[o])
    return out


@njit(cache=False, nogil=True)
def sdsa_mask(q, k, v, lif, va, va_new, ws):  # pragma: no cover - compiled
    """Spike-driven SDSA before its projection: per channel the token sum of `k * v` fires
    the attention neuron (membranes `va, va_new[1, D]`), whose spike masks `q[N, D]`."""
    n, d = q.shape
    out = take(ws, n, d)
    tops = mark(ws)
    kv = take_zeros(ws, 1, d)
    for i in range(n):
        for o in range(d):
            kv[0, o] += k[i, o] * v[i, o]
    s = take(ws, 1, d)
    lif_tokens(kv, lif, va, va_new, s)
    for i in range(n):
        for o in range(d):
            out[i, o] = q[i, o] * s[0, o]
    release(ws, tops)
    return out


@njit(cache=False, nogil=True)
def local_rf(x, w, dilations, gh, gw, ws):  # pragma: no cover - compiled
    """`LocalRF`: the sum of depthwise 3x3 convolutions (padding = dilation) of tokens
    `x[N, D]` on their `gh x gw` grid, scattered from the non-zero inputs;
    `w[di * 9 + ky * 3 + kx, D]` is dilation `di`'s kernel."""
    n, d = x.shape
    out = take_zeros(ws, n, d)
    tops = mark(ws)
    active = take_ints(ws, d)
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
    release(ws, tops)
    return out


@njit(cache=False, nogil=True)
def _charge(nxt, coef, cur, j, below, above, u, y):  # pragma: no cover - compiled
    """Compartment `j` of every channel, `nxt[j] = ((a cur[j] + l cur[below]) + up cur[above])
    + g u`, and its share of the readout, `y += r nxt[j]` (`coef = [a, l, up, g, r]`). A
    function of its own, indexing whole arrays rather than row views, so that LLVM vectorises
    both loops (inlined into the scan, the aliasing checks between its many rows stop it):
    2-2.5x faster scans than one loop over the rows."""
    for c in range(nxt.shape[1]):
        nxt[j, c] = ((coef[0, j, c] * cur[j, c] + coef[1, j, c] * cur[below, c])
                     + coef[2, j, c] * cur[above, c]) + coef[3, j, c] * u[c]
    for c in range(nxt.shape[1]):
        y[c] += coef[4, j, c] * nxt[j, c]


@njit(cache=False, nogil=True)
def dendritic_scan(u, x, x_new, decay, lower, upper, gamma, readout, theta, heads,
                   ws):  # pragma: no cover - compiled
    """`DendriticCore.step`: the N tokens of `u[N, D]` in order through each channel's k
    compartments, `X = A X + Gamma u`, `y = C . X`, fire `[y - theta >= 0]`, subtract theta
    from the soma; state `x, x_new[heads * k, d]`, parameters `[heads, k]` (A tridiagonal:
    `decay` on the diagonal, `lower[j] = A[j, j-1]`, `upper[j] = A[j, j+1]`). All D channels
    advance together (the parameters spread to `[k, D]`; contiguous, vectorised); per value
    the sums run in a fixed order, `((a_j x_j + l_j x_{j-1}) + u_j x_{j+1}) + g_j u`."""
    n, d_all = u.shape
    d = d_all // heads
    k = decay.shape[1]
    s = take(ws, n, d_all)
    tops = mark(ws)
    coef = take_zeros(ws, 5 * k, d_all).reshape((5, k, d_all))  # decay, lower, upper, ...
    cur = take(ws, k, d_all)
    for h in range(heads):
        for j in range(k):
            for c in range(h * d, (h + 1) * d):
                coef[0, j, c], coef[3, j, c] = decay[h, j], gamma[h, j]
                coef[4, j, c] = readout[h, j]
                if j > 0:
                    coef[1, j, c] = lower[h, j]
                if j < k - 1:
                    coef[2, j, c] = upper[h, j]
                cur[j, c] = x[h * k + j, c - h * d]
    nxt = take(ws, k, d_all)
    y = take(ws, 1, d_all)[0]
    for t in range(n):
        ut, st = u[t], s[t]
        for c in range(d_all):
            y[c] = ZERO
        for j in range(k):  # lower[0] and upper[k - 1] are zero: the same sums at the ends
            _charge(nxt, coef, cur, j, max(j - 1, 0), min(j + 1, k - 1), ut, y)
        cur, nxt = nxt, cur
        for c in range(d_all):  # fire and subtract theta from the soma, without branches
            fired = np.float32(y[c] - theta >= 0)
            st[c] = fired
            cur[0, c] -= theta * fired
    for h in range(heads):
        for j in range(k):
            for c in range(d):
                x_new[h * k + j, c] = cur[j, h * d + c]
    release(ws, tops)
    return s


@njit(cache=False, nogil=True)
def ternary_tokens(x, lif, v, v_new, s):  # pragma: no cover - compiled
    """`TernaryLIF.step` on `x[N, D]`: `H = V + (X - V) / tau` (or `decay * V + X` where
    `lif = (tau, decay, v_th)` has `decay >= 0`), +1 at `H >= v_th`, -1 at `H <= -v_th`, reset
    to zero on either; membranes `v, v_new`, spikes `s` (which may be `x`)."""
    n, d = x.shape
    tau, decay, v_th = lif[0], lif[1], lif[2]
    for i in range(n):
        for o in range(d):
            if decay >= 0:
                h = decay * v[i, o] + x[i, o]
            else:
                h = v[i, o] + (x[i, o] - v[i, o]) / tau
            pos = np.float32(h - v_th >= 0)
            neg = np.float32(-h - v_th >= 0)
            s[i, o] = pos - neg
            v_new[i, o] = h * (ONE - (pos + neg))


@njit(cache=False, nogil=True)
def kv_product(q, k, v, heads, scale, ws):  # pragma: no cover - compiled
    """`scale * Q_h (K_h^T V_h)` per head for tokens `q, k, v[N, D]` (any values; a zero in
    `q` or `k` is skipped): O(N d^2) per head."""
    n, d_all = q.shape
    d = d_all // heads
    out = take_zeros(ws, n, d_all)
    tops = mark(ws)
    kv = take(ws, d, d)
    for head in range(heads):
        lo = head * d
        kv[:, :] = ZERO
        for m in range(n):
            for i in range(d):
                km = k[m, lo + i]
                if km == 0:
                    continue
                for j in range(d):
                    kv[i, j] += km * v[m, lo + j]
        for t in range(n):
            row = out[t]
            for i in range(d):
                qi = q[t, lo + i]
                if qi == 0:
                    continue
                for j in range(d):
                    row[lo + j] += qi * kv[i, j]
            for j in range(lo, lo + d):
                row[j] = row[j] * scale
    release(ws, tops)
    return out


@njit(cache=False, nogil=True)
def _qkv(s, aw, wi, alif, li, st, vi, which, ws):  # pragma: no cover - compiled
    """Q (0), K (1) or V (2) of `SpikingQKV`: `SN(BN(W s))`."""
    return proj_fire(s, mat(aw, wi + 2 * which), mat(aw, wi + 2 * which + 1), alif[li + which],
                     old(st, vi + which), new(st, vi + which), ws)


@njit(cache=False, nogil=True)
def _fire_proj(a, aw, wi, lif, va, va_new, ws):  # pragma: no cover - compiled
    """`BN(W_o SN_0.5(a))`: the attention neuron and the output projection."""
    spikes = take(ws, a.shape[0], a.shape[1])
    lif_tokens(a, lif, va, va_new, spikes)
    return proj(spikes, mat(aw, wi + 6), mat(aw, wi + 7), ws)


@njit(cache=False, nogil=True)
def lrf_dyn(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws):  # pragma: no cover - compiled
    """LRF-Dyn: `q * core(k * v) + LocalRF(v)`; arrays 8-12 the core's decay, lower, upper,
    gamma and readout `[h, k]`, 13 the local kernels; `ai = (heads, n_dil, dilations...)`,
    `af = (theta,)`; state q, k, v, attn, core `[h * k, d]`."""
    sv = _qkv(s, aw, wi, alif, li, st, vi, 2, ws)
    sk = _qkv(s, aw, wi, alif, li, st, vi, 1, ws)
    local = local_rf(sv, mat(aw, wi + 13), ai[2:2 + ai[1]], gh, gw, ws)
    n, d = sk.shape
    for i in range(n):  # k * v, in k's storage
        for o in range(d):
            sk[i, o] = sk[i, o] * sv[i, o]
    core = dendritic_scan(sk, old(st, vi + 4), new(st, vi + 4), mat(aw, wi + 8), mat(aw, wi + 9),
                          mat(aw, wi + 10), mat(aw, wi + 11), mat(aw, wi + 12), af[0], ai[0], ws)
    a = _qkv(s, aw, wi, alif, li, st, vi, 0, ws)
    for i in range(n):  # q * core + local, in q's storage
        for o in range(d):
            a[i, o] = a[i, o] * core[i, o] + local[i, o]
    return _fire_proj(a, aw, wi, alif[li + 3], old(st, vi + 3), new(st, vi + 3), ws)


@njit(cache=False, nogil=True)
def a2os2a(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws):  # pragma: no cover - compiled
    """A²OS²A: binary Q, real `K = ReLU(BN(W_k s))`, ternary V, `SN_0.5(Q K^T V)`; neurons
    q, v (ternary), attn; state q, v, attn; `ai = (heads, reassociate)`."""
    sq = proj_fire(s, mat(aw, wi), mat(aw, wi + 1), alif[li], old(st, vi), new(st, vi), ws)
    k = proj(s, mat(aw, wi + 2), mat(aw, wi + 3), ws)
    for i in range(k.shape[0]):
        for o in range(k.shape[1]):
            k[i, o] = max(k[i, o], ZERO)
    x = proj(s, mat(aw, wi + 4), mat(aw, wi + 5), ws)
    ternary_tokens(x, alif[li + 1], old(st, vi + 1), new(st, vi + 1), x)  # spikes in x
    return _fire_proj(kv_product(sq, k, x, ai[0], ONE, ws), aw, wi, alif[li + 2],
                      old(st, vi + 2), new(st, vi + 2), ws)


@njit(cache=False, nogil=True)
def sssa(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws):  # pragma: no cover - compiled
    """SSSA: salience `Patch = Q'_n sum_m K'_m / (N d^2)` per head, the saccadic neuron's
    running sums `H_r = lam_r H_r + Patch`, fire `[sum_r w_r H_r - th >= 0]`, gate V; arrays
    8-10: lam `[h, R]`, w `[h, R]`, th `[1, h]`; neurons q, k, v; state q, k, v, h
    `[h * R, N]`."""
    sq = _qkv(s, aw, wi, alif, li, st, vi, 0, ws)
    sk = _qkv(s, aw, wi, alif, li, st, vi, 1, ws)
    sv = _qkv(s, aw, wi, alif, li, st, vi, 2, ws)
    lam, w, th = mat(aw, wi + 8), mat(aw, wi + 9), mat(aw, wi + 10)
    heads = ai[0]
    n, d_all = sq.shape
    d = d_all // heads
    rates = lam.shape[1]
    hs, hs_new = old(st, vi + 3), new(st, vi + 3)
    norm = np.float32(n * d * d)
    gated = take_zeros(ws, n, d_all)
    qc = take(ws, 1, n)[0]
    for head in range(heads):
        lo = head * d
        ksum = ZERO
        for t in range(n):
            qt, kt = ZERO, ZERO
            for o in range(lo, lo + d):
                qt += sq[t, o]
                kt += sk[t, o]
            qc[t] = qt
            ksum += kt
        for t in range(n):
            patch = qc[t] * ksum / norm
            total = ZERO
            for r in range(rates):
                hr = lam[head, r] * hs[head * rates + r, t] + patch
                hs_new[head * rates + r, t] = hr
                total += w[head, r] * hr
            if total - th[0, head] >= 0:
                for o in range(lo, lo + d):
                    gated[t, o] = sv[t, o]
    return proj(gated, mat(aw, wi + 6), mat(aw, wi + 7), ws)


@njit(cache=False, nogil=True)
def statten(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws):  # pragma: no cover - compiled
    """STAtten, causal mode: the chunk's running `sum K^T V` (state 4, `[h * d, d]`), cleared
    when the step within the chunk (state 5, `[1, 1]`) is 0; `a = scale * Q (KV)`, then
    `BN(W_o SN_0.5(a))`; `ai = (heads, chunk, dvs)`, `af = (scale,)`. The DVS branch (`dvs`)
    max-pools Q, K and V over the token grid and gates: `BN(W_o (SN_0.5(a) * p + p))`, `p` the
    pooled input spikes."""
    sq = _qkv(s, aw, wi, alif, li, st, vi, 0, ws)
    sk = _qkv(s, aw, wi, alif, li, st, vi, 1, ws)
    sv = _qkv(s, aw, wi, alif, li, st, vi, 2, ws)
    dvs = ai[2] != 0
    if dvs:
        sq = token_max_pool_3s1(sq, gh, gw, ws)
        sk = token_max_pool_3s1(sk, gh, gw, ws)
        sv = token_max_pool_3s1(sv, gh, gw, ws)
    heads = ai[0]
    n, d_all = sq.shape
    d = d_all // heads
    kv, kv_new = old(st, vi + 4), new(st, vi + 4)
    pos = old(st, vi + 5)[0, 0]
    keep = ONE - np.float32(pos == 0)
    a = take_zeros(ws, n, d_all)
    for head in range(heads):
        lo = head * d
        for i in range(d):
            for j in range(d):
                total = ZERO
                for m in range(n):
                    total += sk[m, lo + i] * sv[m, lo + j]
                kv_new[head * d + i, j] = kv[head * d + i, j] * keep + total
        for t in range(n):
            for i in range(d):
                qi = sq[t, lo + i]
                if qi == 0:
                    continue
                for j in range(d):
                    a[t, lo + j] += qi * kv_new[head * d + i, j]
    for t in range(n):
        for j in range(d_all):
            a[t, j] = a[t, j] * af[0]
    new(st, vi + 5)[0, 0] = (pos + 1) % ai[1]
    if not dvs:
        return _fire_proj(a, aw, wi, alif[li + 3], old(st, vi + 3), new(st, vi + 3), ws)
    lif_tokens(a, alif[li + 3], old(st, vi + 3), new(st, vi + 3), a)  # spikes in a
    pooled = token_max_pool_3s1(s, gh, gw, ws)
    for t in range(n):
        for j in range(d_all):
            a[t, j] = a[t, j] * pooled[t, j] + pooled[t, j]
    return proj(a, mat(aw, wi + 6), mat(aw, wi + 7), ws)


@njit(cache=False, nogil=True)
def attend(code, s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws):  # pragma: no cover
    """The attention of kernel `code` on spike tokens `s[N, D]` (module docstring)."""
    if code == KERNEL_LRF_DYN:
        return lrf_dyn(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws)
    if code == KERNEL_A2OS2A:
        return a2os2a(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws)
    if code == KERNEL_SSSA:
        return sssa(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws)
    if code == KERNEL_STATTEN:
        return statten(s, aw, wi, alif, li, ai, af, st, vi, gh, gw, ws)
    sv = _qkv(s, aw, wi, alif, li, st, vi, 2, ws)
    sk = _qkv(s, aw, wi, alif, li, st, vi, 1, ws)
    sq = _qkv(s, aw, wi, alif, li, st, vi, 0, ws)
    if code == KERNEL_SDSA:  # ai = (heads, dvs_pool)
        if ai[1]:
            sk, sv = token_max_pool_3s1(sk, gh, gw, ws), token_max_pool_3s1(sv, gh, gw, ws)
        return proj(sdsa_mask(sq, sk, sv, alif[li + 3], old(st, vi + 3), new(st, vi + 3), ws),
                    mat(aw, wi + 6), mat(aw, wi + 7), ws)
    # ssa and lrf_ssa: ai = (heads,), af = (scale,) or (scale, lam)
    a = ssa_scores(sq, sk, sv, ai[0], af[0], ws)
    if code == KERNEL_LRF_SSA:
        local = local_rf(sv, mat(aw, wi + 8), ai[2:2 + ai[1]], gh, gw, ws)
        lam = af[1]
        for t in range(a.shape[0]):
            for o in range(a.shape[1]):
                a[t, o] = (ONE - lam) * a[t, o] + lam * local[t, o]
    return _fire_proj(a, aw, wi, alif[li + 3], old(st, vi + 3), new(st, vi + 3), ws)
