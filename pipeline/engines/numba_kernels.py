"""Event-driven numba kernels: the layers every part of the numba engine is built from.

The attention kernels are in `numba_attention`, the block and the whole step in
`numba_network`; `numba_step` packs a model's weights and state for them. Convolutions and
linear layers are computed by scattering: every non-zero input (an event count in the first
layer, a spike after it) adds its row of weights, `val * w`, to the outputs it reaches, so the work
grows with the number of spikes rather than the size of the map, and a spike costs additions
only. Accumulators are channels-last (`[positions, C]`) so that those additions run over
contiguous channels, and so are maps and membranes (`[H, W, C]` in the stem, tokens `[N, D]`
after it: the same layout). Sums run in another order than a dense GEMM's, so results agree
with `model.step` to float rounding.

Every neuron is `_fire`, which follows `network.neurons.lif_update` operation for operation,
in float32:
`h = v + (y - v) / tau`, `s = [h >= v_th]`, `v = h * [h < v_th]`, where `y` is the
batch-normed input `acc * alpha + shift` (ATen's eval batch norm: `alpha = gamma /
sqrt(var + eps)`, `shift = b - mean * alpha`) or, for neurons on the residual stream, the
tokens themselves.

Scratch: no kernel allocates. Every temporary array is taken from a workspace `ws = (floats,
ints, cursor)` that `numba_step.NumbaStep` allocates once: `take` / `take_ints` hand out the
next rows of `floats` / `ints` (a bump allocator; a kernel that is done with its temporaries
sets the cursor back with `release`). `cursor = [float top, int top, float high-water, int
high-water]`. A workspace too small for a step is not an error: `take` then allocates, the
high-water marks record what the step needed, and the owner grows the workspace after it.

Packed parameters (see `numba_step`): `lif[i] = (tau, beta, v_th)`; `bn[i] = [alpha; shift;
bias]` (`[3, C]`; the bias is the linear layer's before the norm, zeros where it has none);
linear weights `[D_in, D_out]`; stem layers `cfg[i] = (stride, pool)` with pool 0 none, 1 max
3/2/1, 2 avg 2/2. Lists of weight arrays travel as one flat array and a shape table
(`pack_arrays`; `mat` and `conv_weights` give each back as a view).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numba import njit

ONE = np.float32(1.0)
ZERO = np.float32(0.0)
POOL_NONE, POOL_MAX, POOL_AVG = 0, 1, 2


def pack_arrays(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """float32 arrays of up to 4 dimensions as one flat array and a table whose row i is
    `(offset, d0, d1, d2, d3)` (missing dimensions 1): what `mat` and `conv_weights` read.
    Passing two arrays instead of a list of many keeps a compiled call cheap: numba unboxes a
    typed list of arrays element by element on every call (0.3 ms a step for the lists of a
    small model, more than its whole step)."""
    arrays = [np.ascontiguousarray(a, np.float32) for a in arrays]
    table = np.ones((len(arrays), 5), np.int64)
    offset = 0
    for i, a in enumerate(arrays):
        if not 1 <= a.ndim <= 4:
            raise ValueError(f"pack_arrays takes 1- to 4-dimensional arrays, got {a.shape}")
        table[i, 0] = offset
        table[i, 1:1 + a.ndim] = a.shape
        offset += a.size
    flat = (np.concatenate([a.ravel() for a in arrays]) if arrays
            else np.zeros(0, np.float32))
    return flat, table


@njit(cache=True, nogil=True, inline="always")
def mat(packed, i):  # pragma: no cover - compiled
    """Array `i` of `pack_arrays`'s `(flat, table)` as a 2-D view `[d0, d1 * d2 * d3]`."""
    flat, table = packed
    start, rows = table[i, 0], table[i, 1]
    cols = table[i, 2] * table[i, 3] * table[i, 4]
    return flat[start:start + rows * cols].reshape((rows, cols))


@njit(cache=True, nogil=True, inline="always")
def conv_weights(packed, i):  # pragma: no cover - compiled
    """Array `i` of `pack_arrays`'s `(flat, table)` as a 4-D view (conv weights
    `[C_in, K, K, C_out]`)."""
    flat, table = packed
    start = table[i, 0]
    shape = (table[i, 1], table[i, 2], table[i, 3], table[i, 4])
    return flat[start:start + shape[0] * shape[1] * shape[2] * shape[3]].reshape(shape)


def workspace(floats: int = 0, ints: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A workspace of `floats` float32 and `ints` int64 slots (module docstring)."""
    return np.zeros(floats, np.float32), np.zeros(ints, np.int64), np.zeros(4, np.int64)


@njit(cache=True, nogil=True, inline="always")
def take(ws, rows, cols):  # pragma: no cover - compiled
    """`[rows, cols]` float32 scratch (uninitialised) from workspace `ws` (module docstring)."""
    floats, cursor = ws[0], ws[2]
    start = cursor[0]
    end = start + rows * cols
    cursor[0] = end
    cursor[2] = max(cursor[2], end)
    if end > floats.shape[0]:  # too small: this step allocates, the owner grows `floats`
        return np.empty((rows, cols), np.float32)
    return floats[start:end].reshape((rows, cols))


@njit(cache=True, nogil=True, inline="always")
def take_zeros(ws, rows, cols):  # pragma: no cover - compiled
    """`take`, filled with zeros."""
    out = take(ws, rows, cols)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = ZERO
    return out


@njit(cache=True, nogil=True, inline="always")
def take_ints(ws, n):  # pragma: no cover - compiled
    """`[n]` int64 scratch (uninitialised) from workspace `ws`."""
    ints, cursor = ws[1], ws[2]
    start = cursor[1]
    end = start + n
    cursor[1] = end
    cursor[3] = max(cursor[3], end)
    if end > ints.shape[0]:
        return np.empty(n, np.int64)
    return ints[start:end]


@njit(cache=True, nogil=True, inline="always")
def mark(ws):  # pragma: no cover - compiled
    """The workspace's tops, for `release`."""
    return ws[2][0], ws[2][1]


@njit(cache=True, nogil=True, inline="always")
def release(ws, tops):  # pragma: no cover - compiled
    """Hand back everything taken since `mark` gave `tops` (none of it may be used after)."""
    ws[2][0], ws[2][1] = tops[0], tops[1]


@njit(cache=True, nogil=True, inline="always")
def _leaf(flat, layout, i):  # pragma: no cover - compiled
    """State leaf `i` of a flat state: `layout[i] = (offset, rows, columns)`, as `[rows,
    columns]` (a view)."""
    start, rows, cols = layout[i, 0], layout[i, 1], layout[i, 2]
    return flat[start:start + rows * cols].reshape((rows, cols))


@njit(cache=True, nogil=True, inline="always")
def old(st, i):  # pragma: no cover - compiled
    """State leaf `i` before the step, of the flat states `st = (state, new, layout)`."""
    return _leaf(st[0], st[2], i)


@njit(cache=True, nogil=True, inline="always")
def new(st, i):  # pragma: no cover - compiled
    """State leaf `i` after the step (written by it), of `st = (state, new, layout)`."""
    return _leaf(st[1], st[2], i)


@njit(cache=True, nogil=True)
def _reach(size, out_size, k, stride, ws):  # pragma: no cover - compiled
    """For each input index, the first and last output index whose window (stride, padding
    1, kernel k) covers it: output o covers inputs `o * stride - 1 .. o * stride - 2 + k`."""
    lo = take_ints(ws, size)
    hi = take_ints(ws, size)
    for i in range(size):
        lo[i] = max(0, -((k - 2 - i) // stride))  # ceil((i + 2 - k) / stride)
        hi[i] = min(out_size - 1, (i + 1) // stride)
    return lo, hi


@njit(cache=True, nogil=True)
def conv_scatter(x, w, stride, acc, out_w, ws):  # pragma: no cover - compiled
    """`acc[Ho * Wo, Co] += conv2d(x[H, W, C], w[C, K, K, Co])` (stride, padding 1)."""
    h, wd, c_in = x.shape
    k = w.shape[1]
    c_out = w.shape[3]
    out_h = acc.shape[0] // out_w
    tops = mark(ws)
    y_lo, y_hi = _reach(h, out_h, k, stride, ws)
    x_lo, x_hi = _reach(wd, out_w, k, stride, ws)
    cols = take_ints(ws, wd * c_in)
    chans = take_ints(ws, wd * c_in)
    # a frame `[P, H, W]` seen as `[H, W, P]` has its channels far apart: scan it plane by plane
    channels_last = x.strides[2] <= x.strides[1]
    for y in range(h):
        n = 0
        if channels_last:  # the row's non-zero inputs, in memory order, without branches
            for xx in range(wd):
                for c in range(c_in):
                    cols[n] = xx
                    chans[n] = c
                    n += x[y, xx, c] != 0
        else:
            for c in range(c_in):
                for xx in range(wd):
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
    release(ws, tops)


@njit(cache=True, nogil=True)
def linear_scatter(x, wt, acc, ws):  # pragma: no cover - compiled
    """`acc[N, Do] += x[N, Di] @ wt[Di, Do]`, one row of `wt` per non-zero input."""
    n, d_in = x.shape
    d_out = wt.shape[1]
    tops = mark(ws)
    cols = take_ints(ws, d_in)
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
    release(ws, tops)


@njit(cache=True, nogil=True, inline="always")
def _fire(y, tau, beta, v_th, v):  # pragma: no cover - compiled
    """One neuron: `(spike, new membrane)` for normed input `y` and membrane `v`, without
    branches (`h * (1 - s)` is `h * [h < v_th]` exactly, NaN included)."""
    h = v + (y - v) / tau
    s = np.float32(h >= v_th)
    return s, h * (ONE - s)


@njit(cache=True, nogil=True)
def bn_lif(acc, bn, lif, v, v_new, s):  # pragma: no cover - compiled
    """Norm and fire `acc[N, D]` with membranes `v, v_new[N, D]` into spikes `s[N, D]`
    (which may be `acc` itself: each element is read before it is written)."""
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
def max_pool_3s2(x, out, ws):  # pragma: no cover - compiled
    """3x3 max-pool, stride 2, padding 1, of `x[H, W, C]` (H and W even) into `out`."""
    h, w, c = x.shape
    tops = mark(ws)
    rows = take(ws, (h // 2) * w, c).reshape((h // 2, w, c))
    for oy in range(h // 2):
        for xx in range(w):
            for o in range(c):
                m = max(x[2 * oy, xx, o], x[2 * oy + 1, xx, o])
                rows[oy, xx, o] = max(m, x[2 * oy - 1, xx, o]) if oy > 0 else m
    for oy in range(h // 2):
        for ox in range(w // 2):
            for o in range(c):
                m = max(rows[oy, 2 * ox, o], rows[oy, 2 * ox + 1, o])
                out[oy, ox, o] = max(m, rows[oy, 2 * ox - 1, o]) if ox > 0 else m
    release(ws, tops)


@njit(cache=True, nogil=True)
def avg_pool_2s2(x, out):  # pragma: no cover - compiled
    """2x2 average pool, stride 2, of `x[H, W, C]` into `out`."""
    h, w, c = x.shape
    for oy in range(h // 2):
        for ox in range(w // 2):
            for o in range(c):
                total = (x[2 * oy, 2 * ox, o] + x[2 * oy, 2 * ox + 1, o]
                         + x[2 * oy + 1, 2 * ox, o] + x[2 * oy + 1, 2 * ox + 1, o])
                out[oy, ox, o] = total / np.float32(4.0)


@njit(cache=True, nogil=True)
def stem_layer(x, w, bn, lif, stride, pool, v, v_new, ws):  # pragma: no cover - compiled
    """conv - BN - LIF (- pool) of maps `x[H, W, C]`; membranes `v, v_new[H' * W', C']`.
    The output is taken from `ws` and stays there; a pooled layer's full map is handed back."""
    c = w.shape[3]
    out_w = x.shape[1] // stride
    out_h = v.shape[0] // out_w
    if pool == POOL_NONE:
        acc = take_zeros(ws, v.shape[0], c)
        conv_scatter(x, w, stride, acc, out_w, ws)
        bn_lif(acc, bn, lif, v, v_new, acc)  # spikes in the accumulator's storage
        return acc.reshape((out_h, out_w, c))
    out = take(ws, (out_h // 2) * (out_w // 2), c).reshape((out_h // 2, out_w // 2, c))
    tops = mark(ws)
    acc = take_zeros(ws, v.shape[0], c)
    conv_scatter(x, w, stride, acc, out_w, ws)
    bn_lif(acc, bn, lif, v, v_new, acc)
    s3 = acc.reshape((out_h, out_w, c))
    if pool == POOL_MAX:
        max_pool_3s2(s3, out, ws)
    else:
        avg_pool_2s2(s3, out)
    release(ws, tops)
    return out


@njit(cache=True, nogil=True, inline="always")
def _biased(ws, rows, bn):  # pragma: no cover - compiled
    """`[rows, C]` from `ws`, every row the bias `bn[2]`."""
    acc = take(ws, rows, bn.shape[1])
    for i in range(rows):
        for o in range(bn.shape[1]):
            acc[i, o] = bn[2, o]
    return acc


@njit(cache=True, nogil=True)
def proj(x, wt, bn, ws):  # pragma: no cover - compiled
    """`BN(W x + b)` of tokens `x[N, D_in]`: `[N, D_out]`, taken from `ws`."""
    acc = _biased(ws, x.shape[0], bn)
    linear_scatter(x, wt, acc, ws)
    batch_norm(acc, bn)
    return acc


@njit(cache=True, nogil=True)
def proj_fire(x, wt, bn, lif, v, v_new, ws):  # pragma: no cover - compiled
    """`SN(BN(W x + b))` of tokens `x[N, D_in]`: spikes `[N, D_out]` taken from `ws`,
    membranes `v -> v_new`."""
    acc = _biased(ws, x.shape[0], bn)
    linear_scatter(x, wt, acc, ws)
    bn_lif(acc, bn, lif, v, v_new, acc)  # spikes in the accumulator's storage
    return acc
