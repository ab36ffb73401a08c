"""Event-driven numba kernels for one timestep of the spiking transformer on the CPU.

`step_kernel` runs a whole `SpikingTransformer.step` (ssa or sdsa attention) in one compiled
call; `pipeline.numba_step` packs a model's weights and state for it. Convolutions and linear
layers are computed by scattering: every non-zero input (an event count in the first layer, a
spike after it) adds its row of weights, `val * w`, to the outputs it reaches, so the work
grows with the number of spikes rather than the size of the map, and a spike costs additions
only. Accumulators are channels-last (`[positions, C]`) so that those additions run over
contiguous channels, and so are maps and membranes (`[H, W, C]` in the stem, tokens `[N, D]`
after it: the same layout). Sums run in another order than a dense GEMM's, so results agree
with `model.step` to float rounding.

Neurons follow `attention.base.lif_fire_` operation for operation, in float32:
`h = y / tau`, `h = h + beta * v`, `s = [h >= v_th]`, `v = h * [h < v_th]`, where `y` is the
batch-normed input `acc * alpha + shift` (ATen's eval batch norm: `alpha = gamma /
sqrt(var + eps)`, `shift = b - mean * alpha`) or, for neurons on the residual stream, the
tokens themselves.

Packed parameters (see `numba_step`): `lif[i] = (tau, beta, v_th)`; `bn[i] = [alpha; shift]`
(`[2, C]`); stem layers `cfg[i] = (stride, pool)` with pool 0 none, 1 max 3/2/1, 2 avg 2/2;
per block six weights `[D_in, D_out]` (q, k, v, proj, fc1, fc2), their six norms, seven
neurons (attn_in, q, k, v, attn, mlp_in, mlp_hidden) and seven membranes in that order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ONE = np.float32(1.0)
ZERO = np.float32(0.0)
POOL_NONE, POOL_MAX, POOL_AVG = 0, 1, 2
ATTN_SSA, ATTN_SDSA = 0, 1
#: Per block: weights / norms (q, k, v, proj, fc1, fc2) and neurons / membranes
#: (attn_in, q, k, v, attn, mlp_in, mlp_hidden).
BLOCK_WEIGHTS, BLOCK_NEURONS = 6, 7


@njit(cache=True, nogil=True)
def _reach(size, out_size, k, stride):  # pragma: no cover - compiled
    """For each input index, the first and last output index whose window (stride, padding
    1, kernel k) covers it: output o covers inputs `o * stride - 1 .. o * stride - 2 + k`."""
    lo = np.empty(size, np.int64)
    hi = np.empty(size, np.int64)
    for i in range(size):
        lo[i] = max(0, -((k - 2 - i) // stride))  # ceil((i + 2 - k) / stride)
        hi[i] = min(out_size - 1, (i + 1) // stride)
    return lo, hi


@njit(cache=True, nogil=True)
def conv_scatter(x, w, stride, acc, out_w):  # pragma: no cover - compiled
    """`acc[Ho * Wo, Co] += conv2d(x[H, W, C], w[C, K, K, Co])` (stride, padding 1)."""
    h, wd, c_in = x.shape
    k = w.shape[1]
    c_out = w.shape[3]
    out_h = acc.shape[0] // out_w
    y_lo, y_hi = _reach(h, out_h, k, stride)
    x_lo, x_hi = _reach(wd, out_w, k, stride)
    cols = np.empty(wd * c_in, np.int64)
    chans = np.empty(wd * c_in, np.int64)
    for y in range(h):
        n = 0
        for xx in range(wd):  # the row's non-zero inputs, without a branch per input
            for c in range(c_in):
                cols[n] = xx
                chans[n] = c
                n += x[y, xx, c] != 0
        for e in range(n):
            xx, c = cols[e], chans[e]
            val = x[y, xx, c]
            for oy in range(y_lo[y], y_hi[y] + 1):
                ky = y + 1 - oy * stride
                for ox in range(x_lo[xx], x_hi[xx] + 1):
                    kx = xx + 1 - ox * stride
                    r = oy * out_w + ox
                    for o in range(c_out):
                        acc[r, o] += val * w[c, ky, kx, o]


@njit(cache=True, nogil=True)
def linear_scatter(x, wt, acc):  # pragma: no cover - compiled
    """`acc[N, Do] += x[N, Di] @ wt[Di, Do]`, one row of `wt` per non-zero input."""
    n, d_in = x.shape
    d_out = wt.shape[1]
    cols = np.empty(d_in, np.int64)
    for i in range(n):
        m = 0
        for c in range(d_in):  # the token's non-zero inputs, without a branch per input
            cols[m] = c
            m += x[i, c] != 0
        for e in range(m):
            c = cols[e]
            val = x[i, c]
            for o in range(d_out):
                acc[i, o] += val * wt[c, o]


@njit(cache=True, nogil=True, inline="always")
def _fire(y, tau, beta, v_th, v):  # pragma: no cover - compiled
    """One neuron: `(spike, new membrane)` for normed input `y` and membrane `v`, without
    branches (`h * (1 - s)` is `h * [h < v_th]` exactly, NaN included)."""
    h = y / tau
    h = h + beta * v
    s = np.float32(h >= v_th)
    return s, h * (ONE - s)


@njit(cache=True, nogil=True)
def bn_lif(acc, bn, lif, v, v_new, s):  # pragma: no cover - compiled
    """Norm and fire `acc[N, D]` with membranes `v, v_new[N, D]` into spikes `s[N, D]`."""
    n, d = acc.shape
    tau, beta, v_th = lif[0], lif[1], lif[2]
    for i in range(n):
        for o in range(d):
            s[i, o], v_new[i, o] = _fire(acc[i, o] * bn[0, o] + bn[1, o], tau, beta, v_th,
                                         v[i, o])


@njit(cache=True, nogil=True)
def lif_tokens(x, lif, v, v_new, s):  # pragma: no cover - compiled
    """Fire tokens `x[N, D]` as they are (no norm): membranes `v, v_new`, spikes `s`."""
    n, d = x.shape
    tau, beta, v_th = lif[0], lif[1], lif[2]
    for i in range(n):
        for o in range(d):
            s[i, o], v_new[i, o] = _fire(x[i, o], tau, beta, v_th, v[i, o])


@njit(cache=True, nogil=True)
def batch_norm(acc, bn):  # pragma: no cover - compiled
    """In place: `acc[N, D] = acc * alpha + shift`."""
    n, d = acc.shape
    for i in range(n):
        for o in range(d):
            acc[i, o] = acc[i, o] * bn[0, o] + bn[1, o]


@njit(cache=True, nogil=True)
def max_pool_3s2(x):  # pragma: no cover - compiled
    """3x3 max-pool, stride 2, padding 1, of `x[H, W, C]` (H and W even)."""
    h, w, c = x.shape
    rows = np.empty((h // 2, w, c), np.float32)
    for oy in range(h // 2):
        for xx in range(w):
            for o in range(c):
                m = max(x[2 * oy, xx, o], x[2 * oy + 1, xx, o])
                rows[oy, xx, o] = max(m, x[2 * oy - 1, xx, o]) if oy > 0 else m
    out = np.empty((h // 2, w // 2, c), np.float32)
    for oy in range(h // 2):
        for ox in range(w // 2):
            for o in range(c):
                m = max(rows[oy, 2 * ox, o], rows[oy, 2 * ox + 1, o])
                out[oy, ox, o] = max(m, rows[oy, 2 * ox - 1, o]) if ox > 0 else m
    return out


@njit(cache=True, nogil=True)
def avg_pool_2s2(x):  # pragma: no cover - compiled
    """2x2 average pool, stride 2, of `x[H, W, C]`."""
    h, w, c = x.shape
    out = np.empty((h // 2, w // 2, c), np.float32)
    for oy in range(h // 2):
        for ox in range(w // 2):
            for o in range(c):
                total = (x[2 * oy, 2 * ox, o] + x[2 * oy, 2 * ox + 1, o]
                         + x[2 * oy + 1, 2 * ox, o] + x[2 * oy + 1, 2 * ox + 1, o])
                out[oy, ox, o] = total / np.float32(4.0)
    return out


@njit(cache=True, nogil=True)
def stem_layer(x, w, bn, lif, stride, pool, v, v_new):  # pragma: no cover - compiled
    """conv - BN - LIF (- pool) of maps `x[H, W, C]`; membranes `v, v_new[H' * W', C']`."""
    c = w.shape[3]
    out_w = x.shape[1] // stride
    acc = np.zeros(v.shape, np.float32)
    conv_scatter(x, w, stride, acc, out_w)
    s = np.empty(v.shape, np.float32)
    bn_lif(acc, bn, lif, v, v_new, s)
    s3 = s.reshape((v.shape[0] // out_w, out_w, c))
    if pool == POOL_MAX:
        return max_pool_3s2(s3)
    if pool == POOL_AVG:
        return avg_pool_2s2(s3)
    return s3


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
def _proj(x, wt, bn):  # pragma: no cover - compiled
    acc = np.zeros((x.shape[0], wt.shape[1]), np.float32)
    linear_scatter(x, wt, acc)
    batch_norm(acc, bn)
    return acc


@njit(cache=True, nogil=True)
def _proj_fire(x, wt, bn, lif, v, v_new):  # pragma: no cover - compiled
    acc = np.zeros((x.shape[0], wt.shape[1]), np.float32)
    linear_scatter(x, wt, acc)
    s = np.empty_like(acc)
    bn_lif(acc, bn, lif, v, v_new, s)
    return s


@njit(cache=True, nogil=True)
def block(x, j, w, bn, lif, v, v_new, attn, heads, scale, dvs_pool, gh,
          gw):  # pragma: no cover - compiled
    """Block `j`: `x + Attn(SN(x))`, then `+ BN(W_2 SN(BN(W_1 SN(.))))`, on tokens `x[N, D]`."""
    wi, ni = j * BLOCK_WEIGHTS, j * BLOCK_NEURONS
    s = np.empty_like(x)
    lif_tokens(x, lif[ni], v[ni], v_new[ni], s)
    q = _proj_fire(s, w[wi], bn[wi], lif[ni + 1], v[ni + 1], v_new[ni + 1])
    k = _proj_fire(s, w[wi + 1], bn[wi + 1], lif[ni + 2], v[ni + 2], v_new[ni + 2])
    vv = _proj_fire(s, w[wi + 2], bn[wi + 2], lif[ni + 3], v[ni + 3], v_new[ni + 3])
    if attn == ATTN_SSA:
        scores = ssa_scores(q, k, vv, heads, scale)
        spikes = np.empty_like(scores)
        lif_tokens(scores, lif[ni + 4], v[ni + 4], v_new[ni + 4], spikes)
    else:
        if dvs_pool:
            k, vv = token_max_pool_3s1(k, gh, gw), token_max_pool_3s1(vv, gh, gw)
        spikes = sdsa_mask(q, k, vv, lif[ni + 4], v[ni + 4], v_new[ni + 4])
    x = x + _proj(spikes, w[wi + 3], bn[wi + 3])
    lif_tokens(x, lif[ni + 5], v[ni + 5], v_new[ni + 5], s)
    h = _proj_fire(s, w[wi + 4], bn[wi + 4], lif[ni + 6], v[ni + 6], v_new[ni + 6])
    return x + _proj(h, w[wi + 5], bn[wi + 5])


@njit(cache=True, nogil=True)
def step_kernel(frame, stem_w, stem_bn, stem_lif, stem_cfg, blk_w, blk_bn, blk_lif, attn, heads,
                scale, dvs_pool, head_w, head_b, layout, state, new,
                logits):  # pragma: no cover - compiled
    """One timestep of the model packed by `numba_step` (module docstring): `frame[H, W, P]`
    (any strides) in, the logits into `logits[C]`. `state` and `new` are flat membranes, all
    channels-last: `layout[i] = (offset, rows, channels)` places stem layer i's `[H * W, C]`
    (the last stem layer is the relative position embedding, added to the stem's output),
    then each block neuron's `[N, D]`."""
    last = len(stem_w) - 1
    views = []
    for i in range(layout.shape[0]):
        o, rows, cols = layout[i, 0], layout[i, 1], layout[i, 2]
        views.append((state[o:o + rows * cols].reshape((rows, cols)),
                      new[o:o + rows * cols].reshape((rows, cols))))
    v, v_new = views[0]
    x = stem_layer(frame, stem_w[0], stem_bn[0], stem_lif[0], stem_cfg[0, 0], stem_cfg[0, 1],
                   v, v_new)
    for i in range(1, last):
        v, v_new = views[i]
        x = stem_layer(x, stem_w[i], stem_bn[i], stem_lif[i], stem_cfg[i, 0], stem_cfg[i, 1],
                       v, v_new)
    v, v_new = views[last]
    y = stem_layer(x, stem_w[last], stem_bn[last], stem_lif[last], stem_cfg[last, 0],
                   stem_cfg[last, 1], v, v_new)
    gh, gw, d = x.shape
    tokens = (x + y).reshape((gh * gw, d))
    v_blk = [views[i][0] for i in range(last + 1, layout.shape[0])]
    v_blk_new = [views[i][1] for i in range(last + 1, layout.shape[0])]
    for j in range(len(blk_w) // BLOCK_WEIGHTS):
        tokens = block(tokens, j, blk_w, blk_bn, blk_lif, v_blk, v_blk_new, attn, heads, scale,
                       dvs_pool, gh, gw)
    n = tokens.shape[0]
    mean = np.zeros(d, np.float32)
    for i in range(n):
        for o in range(d):
            mean[o] += tokens[i, o]
    for o in range(d):
        mean[o] = mean[o] / np.float32(n)
    for c in range(head_w.shape[0]):
        total = ZERO
        for o in range(d):
            total += head_w[c, o] * mean[o]
        logits[c] = total + head_b[c]
