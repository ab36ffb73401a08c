"""The whole `SpikingTransformer.step` as one compiled call: stem, blocks, head.

`step_kernel` runs what `numba_step.NumbaStep` packs: the stem layers (`numba_kernels`), each
block's neurons and MLP around its attention (`numba_attention_kernels.attend`), and the head.

Caching: numba checks a cached function against its own file only, so a kernel cached here
would keep running old code from another file after that file changed. `step_kernel` is
therefore the one cached entry point of the engine, and it closes over a digest of every
kernel file (a closure's contents are part of numba's cache key); the attention kernels and
`block` are compiled into it uncached, and `numba_kernels` caches only calls within itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

from spikestream.pipeline.engines import numba_attention_kernels, numba_kernels
from spikestream.pipeline.engines.numba_attention_kernels import attend, new, old
from spikestream.pipeline.engines.numba_kernels import (
    ZERO,
    lif_tokens,
    mark,
    proj,
    proj_fire,
    release,
    stem_layer,
    take,
    take_zeros,
)

#: Per block: the MLP's two projections as `[W^T, BN]` each, and three neurons (attn_in,
#: mlp_in, mlp_hidden); its state leaves are attn_in, the attention's, mlp_in, mlp_hidden.
BLOCK_ARRAYS, BLOCK_NEURONS = 4, 3


@njit(cache=False, nogil=True, inline="always")
def add_into(x, y):  # pragma: no cover - compiled
    """`x += y` for `[N, D]` arrays."""
    for i in range(x.shape[0]):
        for o in range(x.shape[1]):
            x[i, o] += y[i, o]


@njit(cache=False, nogil=True)
def block(x, j, w, lif, st, vi, code, aw, n_aw, alif, n_alif, ai, af, n_av, gh, gw,
          ws):  # pragma: no cover - compiled
    """Block `j`, in place on tokens `x[N, D]`: `x + Attn(SN(x))`, then
    `+ BN(W_2 SN(BN(W_1 SN(.))))`; its state leaves start at leaf `vi` of `st`, its attention's
    `n_av` at `vi + 1`. Its scratch is handed back to `ws` before it returns."""
    wi, ni = j * BLOCK_ARRAYS, j * BLOCK_NEURONS
    n, d = x.shape
    tops = mark(ws)
    s = take(ws, n, d)
    lif_tokens(x, lif[ni], old(st, vi), new(st, vi), s)
    add_into(x, attend(code, s, aw, j * n_aw, alif, j * n_alif, ai[j], af[j], st, vi + 1,
                       gh, gw, ws))
    release(ws, tops)
    m = vi + 1 + n_av
    s = take(ws, n, d)
    lif_tokens(x, lif[ni + 1], old(st, m), new(st, m), s)
    h = proj_fire(s, w[wi], w[wi + 1], lif[ni + 2], old(st, m + 1), new(st, m + 1), ws)
    add_into(x, proj(h, w[wi + 2], w[wi + 3], ws))
    release(ws, tops)


def _step_kernel(sources_digest: int):
    """`step_kernel`, cached under `sources_digest` (module docstring)."""

    @njit(cache=True, nogil=True)
    def step_kernel(frame, stem_w, stem_bn, stem_lif, stem_cfg, blk_w, blk_lif, code, aw, n_aw,
                    alif, n_alif, ai, af, n_av, head_w, head_b, layout, state, new_state,
                    logits, floats, ints, cursor):  # pragma: no cover - compiled
        """One timestep of the packed model: `frame[H, W, P]` (any strides) in, the logits into
        `logits[C]`. `state` and `new_state` are flat: `layout[i] = (offset, rows, columns)`
        places leaf i, stem layer i's membrane `[H * W, C]` channels-last (the last stem layer
        is the relative position embedding, added to the stem's output), then each block's
        leaves. Scratch comes from the workspace `floats`, `ints`, `cursor`
        (`numba_kernels.take`); afterwards `cursor[2:]` holds what the step needed."""
        ws = (floats, ints, cursor)
        cursor[:] = 0
        st = (state, new_state, layout)
        last = len(stem_w) - 1
        x = stem_layer(frame, stem_w[0], stem_bn[0], stem_lif[0], stem_cfg[0, 0],
                       stem_cfg[0, 1], old(st, 0), new(st, 0), ws)
        for i in range(1, last):
            x = stem_layer(x, stem_w[i], stem_bn[i], stem_lif[i], stem_cfg[i, 0],
                           stem_cfg[i, 1], old(st, i), new(st, i), ws)
        y = stem_layer(x, stem_w[last], stem_bn[last], stem_lif[last], stem_cfg[last, 0],
                       stem_cfg[last, 1], old(st, last), new(st, last), ws)
        gh, gw, d = x.shape
        tokens = y.reshape((gh * gw, d))
        add_into(tokens, x.reshape((gh * gw, d)))
        per_block = 3 + n_av
        for j in range(len(blk_w) // BLOCK_ARRAYS):
            block(tokens, j, blk_w, blk_lif, st, last + 1 + j * per_block, code, aw, n_aw,
                  alif, n_alif, ai, af, n_av, gh, gw, ws)
        n = tokens.shape[0]
        mean = take_zeros(ws, 1, d)[0]
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
        _ = sources_digest  # in the closure: part of the cache key

    return step_kernel


def _digest() -> int:
    files = (numba_kernels.__file__, numba_attention_kernels.__file__, __file__)
    text = b"".join(Path(f).read_bytes() for f in files)
    return int(hashlib.sha256(text).hexdigest()[:15], 16)


step_kernel = _step_kernel(_digest())
