"""The whole `SpikingTransformer.step` as one compiled call: stem, blocks, head.

`step_kernel` runs what `numba_step.NumbaStep` packs: the stem layers (`numba_kernels`), each
block's neurons and MLP around its attention (`numba_attention_kernels.attend`), and the head,
in each of the block layouts (`network.model.LAYOUTS`: Spikformer's SPS stem or MS-SPS,
membrane-shortcut or Spikformer blocks, a head neuron or not).

Caching: numba checks a cached function against its own file only, so a kernel cached here
would keep running old code from another file after that file changed. `step_kernel` is
therefore the one cached entry point of the engine, and it closes over a digest of every
kernel file (a closure's contents are part of numba's cache key); the attention kernels and
the blocks are compiled into it uncached, and `numba_kernels` caches only calls within itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

from spikestream.pipeline.engines import numba_attention_kernels, numba_kernels
from spikestream.pipeline.engines.numba_attention_kernels import attend
from spikestream.pipeline.engines.numba_kernels import (
    POOL_MAX,
    ZERO,
    batch_norm,
    conv_scatter,
    conv_weights,
    lif_tokens,
    mark,
    mat,
    max_pool_3s2,
    new,
    old,
    proj,
    proj_fire,
    release,
    stem_layer,
    take,
    take_zeros,
)

#: Per block: the MLP's two projections as `[W^T, BN]` each, and three neurons (see `ms_block`
#: and `spikformer_block` for which, and their state leaves).
BLOCK_ARRAYS, BLOCK_NEURONS = 4, 3
#: `kinds[0]`: Spikformer's SPS stem or MS-SPS; `kinds[1]`: membrane-shortcut or Spikformer
#: blocks (`network.model.LAYOUTS`).
STEM_SPS, STEM_MS_SPS = 0, 1
BLOCK_MS, BLOCK_SPIKFORMER = 0, 1


@njit(cache=False, nogil=True, inline="always")
def add_into(x, y):  # pragma: no cover - compiled
    """`x += y` for `[N, D]` arrays."""
    for i in range(x.shape[0]):
        for o in range(x.shape[1]):
            x[i, o] += y[i, o]


@njit(cache=False, nogil=True)
def ms_block(x, j, w, lif, st, vi, code, aw, n_aw, alif, n_alif, ai, af, n_av, gh, gw,
             ws):  # pragma: no cover - compiled
    """Membrane-shortcut block `j`, in place on tokens `x[N, D]`: `x + Attn(SN(x))`, then
    `+ BN(W_2 SN(BN(W_1 SN(.))))`; neurons attn_in, mlp_in, mlp_hidden; state leaves from
    `vi`: attn_in, the attention's `n_av`, mlp_in, mlp_hidden. Its scratch is handed back to
    `ws` before it returns."""
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
    h = proj_fire(s, mat(w, wi), mat(w, wi + 1), lif[ni + 2], old(st, m + 1), new(st, m + 1), ws)
    add_into(x, proj(h, mat(w, wi + 2), mat(w, wi + 3), ws))
    release(ws, tops)


@njit(cache=False, nogil=True)
def spikformer_block(x, j, w, lif, st, vi, code, aw, n_aw, alif, n_alif, ai, af, n_av, gh, gw,
                     ws):  # pragma: no cover - compiled
    """Spikformer's block `j`, in place on tokens `x[N, D]`: `x + SN(Attn(x))`, then
    `+ SN(BN(W_2 SN(BN(W_1 .))))`; neurons attn_out, mlp_hidden, mlp_out; state leaves from
    `vi`: the attention's `n_av`, attn_out, mlp_hidden, mlp_out."""
    wi, ni = j * BLOCK_ARRAYS, j * BLOCK_NEURONS
    tops = mark(ws)
    a = attend(code, x, aw, j * n_aw, alif, j * n_alif, ai[j], af[j], st, vi, gh, gw, ws)
    m = vi + n_av
    lif_tokens(a, lif[ni], old(st, m), new(st, m), a)  # spikes in a's storage
    add_into(x, a)
    release(ws, tops)
    h = proj_fire(x, mat(w, wi), mat(w, wi + 1), lif[ni + 1], old(st, m + 1), new(st, m + 1), ws)
    o = proj(h, mat(w, wi + 2), mat(w, wi + 3), ws)
    lif_tokens(o, lif[ni + 2], old(st, m + 2), new(st, m + 2), o)
    add_into(x, o)
    release(ws, tops)


@njit(cache=False, nogil=True)
def ms_stem_end(x, w, bn, lif, pool, w_rpe, bn_rpe, v, v_new, ws):  # pragma: no cover - compiled
    """MS-SPS's last stage and position embedding on maps `x[H, W, C]`: `f = pool(BN(conv(x)))`
    (real values), `s = SN(f)` (membranes `v, v_new`), tokens `f + BN(conv(s))` `[N, D]`."""
    h, wd, _ = x.shape
    d = w.shape[3]
    gh, gw = (h // 2, wd // 2) if pool == POOL_MAX else (h, wd)
    tokens = take_zeros(ws, gh * gw, d)
    tops = mark(ws)
    if pool == POOL_MAX:
        f = take(ws, gh * gw, d)
        inner = mark(ws)
        acc = take_zeros(ws, h * wd, d)
        conv_scatter(x, w, 1, acc, wd, ws)
        batch_norm(acc, bn)
        max_pool_3s2(acc.reshape((h, wd, d)), f.reshape((gh, gw, d)), ws)
        release(ws, inner)
    else:
        f = take_zeros(ws, gh * gw, d)
        conv_scatter(x, w, 1, f, wd, ws)
        batch_norm(f, bn)
    s = take(ws, gh * gw, d)
    lif_tokens(f, lif, v, v_new, s)
    conv_scatter(s.reshape((gh, gw, d)), w_rpe, 1, tokens, gw, ws)
    batch_norm(tokens, bn_rpe)
    for i in range(gh * gw):  # f + rpe, in the embedding's storage
        for o in range(d):
            tokens[i, o] = f[i, o] + tokens[i, o]
    release(ws, tops)
    return tokens, gh, gw


@njit(cache=False, nogil=True)
def _stage(x, stem_w, stem_bn, stem_lif, stem_cfg, i, st, ws):  # pragma: no cover - compiled
    """Stem layer `i` (conv - BN - LIF - pool) on maps `x`, its membrane state leaf `i`."""
    return stem_layer(x, conv_weights(stem_w, i), mat(stem_bn, i), stem_lif[i], stem_cfg[i, 0],
                      stem_cfg[i, 1], old(st, i), new(st, i), ws)


def _step_kernel(sources_digest: int):
    """`step_kernel`, cached under `sources_digest` (module docstring)."""

    @njit(cache=True, nogil=True)
    def step_kernel(frame, stem_w, stem_bn, stem_lif, stem_cfg, blk_w, blk_lif, code, aw, n_aw,
                    alif, n_alif, ai, af, n_av, head_w, head_b, head_lif, kinds, layout, state,
                    new_state, logits, floats, ints, cursor):  # pragma: no cover - compiled
        """One timestep of the packed model: `frame[H, W, P]` (any strides) in, the logits into
        `logits[C]`. `kinds = (stem, block, head neuron)` (`STEM_*`, `BLOCK_*`, 0 or 1).
        `state` and `new_state` are flat: `layout[i] = (offset, rows, columns)` places leaf i:
        each stem stage's membrane `[H * W, C]` channels-last (the last stem layer is the
        position embedding, which has one in the SPS stem only), then each block's leaves,
        then the head neuron's. Scratch comes from the workspace `floats`, `ints`, `cursor`
        (`numba_kernels.take`); afterwards `cursor[2:]` holds what the step needed."""
        ws = (floats, ints, cursor)
        cursor[:] = 0
        st = (state, new_state, layout)
        last = stem_w[1].shape[0] - 1  # the position embedding
        if kinds[0] == STEM_SPS:
            x = _stage(frame, stem_w, stem_bn, stem_lif, stem_cfg, 0, st, ws)
            for i in range(1, last):
                x = _stage(x, stem_w, stem_bn, stem_lif, stem_cfg, i, st, ws)
            y = _stage(x, stem_w, stem_bn, stem_lif, stem_cfg, last, st, ws)
            gh, gw, d = x.shape
            tokens = y.reshape((gh * gw, d))
            add_into(tokens, x.reshape((gh * gw, d)))
            vi = last + 1
        else:  # STEM_MS_SPS: stages, the pool-first stage, the embedding without a neuron
            maps = frame
            for i in range(last - 1):
                maps = _stage(maps, stem_w, stem_bn, stem_lif, stem_cfg, i, st, ws)
            tokens, gh, gw = ms_stem_end(
                maps, conv_weights(stem_w, last - 1), mat(stem_bn, last - 1), stem_lif[last - 1],
                stem_cfg[last - 1, 1], conv_weights(stem_w, last), mat(stem_bn, last),
                old(st, last - 1), new(st, last - 1), ws)
            d = tokens.shape[1]
            vi = last
        per_block = 3 + n_av
        for j in range(blk_w[1].shape[0] // BLOCK_ARRAYS):
            if kinds[1] == BLOCK_MS:
                ms_block(tokens, j, blk_w, blk_lif, st, vi + j * per_block, code, aw, n_aw,
                         alif, n_alif, ai, af, n_av, gh, gw, ws)
            else:
                spikformer_block(tokens, j, blk_w, blk_lif, st, vi + j * per_block, code, aw,
                                 n_aw, alif, n_alif, ai, af, n_av, gh, gw, ws)
        n = tokens.shape[0]
        mean = take_zeros(ws, 1, d)
        for i in range(n):
            for o in range(d):
                mean[0, o] += tokens[i, o]
        for o in range(d):
            mean[0, o] = mean[0, o] / np.float32(n)
        if kinds[2]:
            h = layout.shape[0] - 1
            lif_tokens(mean, head_lif, old(st, h), new(st, h), mean)
        for c in range(head_w.shape[0]):
            total = ZERO
            for o in range(d):
                total += head_w[c, o] * mean[0, o]
            logits[c] = total + head_b[c]
        _ = sources_digest  # in the closure: part of the cache key

    return step_kernel


def _digest() -> int:
    files = (numba_kernels.__file__, numba_attention_kernels.__file__, __file__)
    text = b"".join(Path(f).read_bytes() for f in files)
    return int(hashlib.sha256(text).hexdigest()[:15], 16)


step_kernel = _step_kernel(_digest())
