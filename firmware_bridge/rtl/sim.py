"""Drive `LRFDynCoreRTL` in Amaranth's simulator as a device front end would.

Parameters are written byte by byte from the blob body, `u` goes in as bit-packed words with
optional random gaps on both streams, and the state is read back through the state port.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from spikestream.firmware_bridge.intcore import CoreParams
from spikestream.firmware_bridge.rtl.core import LRFDynCoreRTL

_HEADER_BYTES = 16


def pack_words(bits: np.ndarray, word: int) -> np.ndarray:
    """Rows of bits `[steps, nbits]` -> `[steps, ceil(nbits / word)]` words, LSB first."""
    steps, nbits = bits.shape
    nw = -(-nbits // word)
    padded = np.zeros((steps, nw * word), dtype=np.uint64)
    padded[:, :nbits] = bits
    return (padded.reshape(steps, nw, word) << np.arange(word, dtype=np.uint64)).sum(-1)


def unpack_words(words: np.ndarray, nbits: int, word: int) -> np.ndarray:
    """Inverse of `pack_words`: `[steps, nw]` words -> `[steps, nbits]` bool."""
    w = np.asarray(words, dtype=np.uint64)
    bits = (w[..., None] >> np.arange(word, dtype=np.uint64)) & 1
    return bits.reshape(w.shape[0], -1)[:, :nbits].astype(bool)


def state_to_memory(state: np.ndarray) -> np.ndarray:
    """IntCore's `[heads, k, head_dim]` state -> the core's words at `(h*head_dim + i)*k + j`."""
    return np.ascontiguousarray(np.asarray(state).transpose(0, 2, 1)).reshape(-1)


def memory_to_state(words: np.ndarray, heads: int, head_dim: int, k: int) -> np.ndarray:
    """Inverse of `state_to_memory`."""
    return np.asarray(words).reshape(heads, head_dim, k).transpose(0, 2, 1).astype(np.int16)


@dataclass
class SimResult:
    spikes: np.ndarray        # [steps, N, D] bool, all segments in order
    states: list[np.ndarray]  # the state after each segment, [heads, k, head_dim] int16
    cycles: list[int]         # clocks from the first input word to the last spike word, per segment


def simulate(
    params: CoreParams,
    segments: list[np.ndarray],
    *,
    initial_state: np.ndarray | None = None,
    word: int = 8,
    gaps: float = 0.0,
    seed: int = 0,
) -> SimResult:
    """Run `segments` (each `[steps, N, D]` bool, streamed back to back) through the core.

    `gaps` is the probability that the source withholds a word or the sink refuses one in a
    clock (0: both streams always ready). The state is read after each segment.
    """
    p = params
    dut = LRFDynCoreRTL(p.heads, p.head_dim, p.k, p.n_tokens, word=word)
    nbits = p.n_tokens * p.dim
    body = p.to_blob()[_HEADER_BYTES:]
    rng = np.random.default_rng(seed)
    spikes: list[np.ndarray] = []
    states: list[np.ndarray] = []
    cycles: list[int] = []

    async def bench(ctx):
        for off, byte in enumerate(body):
            ctx.set(dut.p_addr, off)
            ctx.set(dut.p_data, byte)
            ctx.set(dut.p_we, 1)
            await ctx.tick()
        ctx.set(dut.p_we, 0)
        while ctx.get(dut.busy):
            await ctx.tick()
        if initial_state is not None:
            for a, v in enumerate(state_to_memory(initial_state)):
                ctx.set(dut.st_addr, a)
                ctx.set(dut.st_wdata, int(v))
                ctx.set(dut.st_we, 1)
                await ctx.tick()
            ctx.set(dut.st_we, 0)
        for seg in segments:
            u = np.asarray(seg, dtype=bool)
            words = pack_words(u.reshape(len(u), nbits), word)
            want = words.size
            flat = [int(w) for w in words.reshape(-1)]
            got: list[int] = []
            lasts: list[int] = []
            sent = clk = 0
            while len(got) < want:
                src = sent < len(flat) and (gaps == 0.0 or rng.random() >= gaps)
                sink = gaps == 0.0 or rng.random() >= gaps
                ctx.set(dut.u_valid, src)
                if src:
                    ctx.set(dut.u_data, flat[sent])
                ctx.set(dut.s_ready, sink)
                took = src and ctx.get(dut.u_ready)
                out = sink and ctx.get(dut.s_valid)
                if out:
                    got.append(ctx.get(dut.s_data))
                    lasts.append(ctx.get(dut.s_last))
                await ctx.tick()
                sent += took
                clk += 1
            ctx.set(dut.u_valid, 0)
            cycles.append(clk)
            per_step = words.shape[1]
            if lasts != [int((i + 1) % per_step == 0) for i in range(want)]:
                raise AssertionError("s_last does not mark the last word of each timestep")
            spikes.append(unpack_words(np.array(got).reshape(len(u), per_step), nbits, word)
                          .reshape(len(u), p.n_tokens, p.dim))
            while ctx.get(dut.busy):
                await ctx.tick()
            mem = []
            for a in range(dut.state_words):
                ctx.set(dut.st_addr, a)
                await ctx.tick()
                mem.append(ctx.get(dut.st_rdata))
            states.append(memory_to_state(np.array(mem), p.heads, p.head_dim, p.k))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return SimResult(np.concatenate(spikes), states, cycles)
