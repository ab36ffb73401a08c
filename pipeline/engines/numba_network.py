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
from spikestream.pipeline.engines.numba_attention_kernels import attend
from spikestream.pipeline.engines.numba_kernels import ZERO, lif_tokens, proj, proj_fire, stem_layer

#: Per block: the MLP's two projections as `[W^T, BN]` each, and three neurons (attn_in,
#: mlp_in, mlp_hidden); its state leaves are attn_in, the attention's, mlp_in, mlp_hidden.
BLOCK_ARRAYS, BLOCK_NEURONS = 4, 3


@njit(cache=False, nogil=True)
def block(x, j, w, lif, v, v_new, vi, code, aw, n_aw, alif, n_alif, ai, af, n_av, gh,
          gw):  # pragma: no cover - compiled
    """Block `j`: `x + Attn(SN(x))`, then `+ BN(W_2 SN(BN(W_1 SN(.))))`, on tokens `x[N, D]`;
    its state leaves start at `v[vi]`, its attention's `n_av` at `v[vi + 1]`."""
    wi, ni = j * BLOCK_ARRAYS, j * BLOCK_NEURONS
    s = np.empty_like(x)
    lif_tokens(x, lif[ni], v[vi], v_new[vi], s)
    x = x + attend(code, s, aw, j * n_aw, alif, j * n_alif, ai[j], af[j], v, v_new, vi + 1,
                   gh, gw)
    m = vi + 1 + n_av
    lif_tokens(x, lif[ni + 1], v[m], v_new[m], s)
    h = proj_fire(s, w[wi], w[wi + 1], lif[ni + 2], v[m + 1], v_new[m + 1])
    return x + proj(h, w[wi + 2], w[wi + 3])


def _step_kernel(sources_digest: int):
    """`step_kernel`, cached under `sources_digest` (module docstring)."""

    @njit(cache=True, nogil=True)
    def step_kernel(frame, stem_w, stem_bn, stem_lif, stem_cfg, blk_w, blk_lif, code, aw, n_aw,
                    alif, n_alif, ai, af, n_av, head_w, head_b, layout, state, new,
                    logits):  # pragma: no cover - compiled
        """One timestep of the packed model: `frame[H, W, P]` (any strides) in, the logits into
        `logits[C]`. `state` and `new` are flat: `layout[i] = (offset, rows, columns)` places
        leaf i, stem layer i's membrane `[H * W, C]` channels-last (the last stem layer is the
        relative position embedding, added to the stem's output), then each block's leaves."""
        last = len(stem_w) - 1
        v, v_new = [], []
        for i in range(layout.shape[0]):
            o, rows, cols = layout[i, 0], layout[i, 1], layout[i, 2]
            v.append(state[o:o + rows * cols].reshape((rows, cols)))
            v_new.append(new[o:o + rows * cols].reshape((rows, cols)))
        x = stem_layer(frame, stem_w[0], stem_bn[0], stem_lif[0], stem_cfg[0, 0],
                       stem_cfg[0, 1], v[0], v_new[0])
        for i in range(1, last):
            x = stem_layer(x, stem_w[i], stem_bn[i], stem_lif[i], stem_cfg[i, 0],
                           stem_cfg[i, 1], v[i], v_new[i])
        y = stem_layer(x, stem_w[last], stem_bn[last], stem_lif[last], stem_cfg[last, 0],
                       stem_cfg[last, 1], v[last], v_new[last])
        gh, gw, d = x.shape
        tokens = (x + y).reshape((gh * gw, d))
        per_block = 3 + n_av
        for j in range(len(blk_w) // BLOCK_ARRAYS):
            tokens = block(tokens, j, blk_w, blk_lif, v, v_new, last + 1 + j * per_block, code,
                           aw, n_aw, alif, n_alif, ai, af, n_av, gh, gw)
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
        _ = sources_digest  # in the closure: part of the cache key

    return step_kernel


def _digest() -> int:
    files = (numba_kernels.__file__, numba_attention_kernels.__file__, __file__)
    text = b"".join(Path(f).read_bytes() for f in files)
    return int(hashlib.sha256(text).hexdigest()[:15], 16)


step_kernel = _step_kernel(_digest())
