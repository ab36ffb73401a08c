"""The integer core: numpy reference vs a scalar re-implementation of docs/arithmetic.md, the
quantized torch path vs the numpy core bit for bit, the parameter blob, and the quantizer."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from spikestream.firmware_bridge.intcore import ARITH_ID, CoreParams, IntCore
from spikestream.firmware_bridge.intcore_jit import JitCore
from spikestream.firmware_bridge.quantize import (
    QuantizedLRFDynCore,
    quantize_cores,
    quantize_lrf_dyn,
)
from spikestream.pipeline.network.attention.lrf_dyn import LRFDyn


def random_params(rng: np.random.Generator, heads: int, k: int, d: int, n: int) -> CoreParams:
    """Parameters over the whole legal range, so that saturation and negative states occur."""
    lower = rng.integers(-128, 128, (heads, k)).astype(np.int8)
    upper = rng.integers(-128, 128, (heads, k)).astype(np.int8)
    lower[:, 0] = 0
    upper[:, -1] = 0
    readout = rng.integers(-128, 128, (heads, k)).astype(np.int8)
    readout[:, 0] = rng.integers(1, 128, heads)
    return CoreParams(
        heads=heads,
        head_dim=d,
        k=k,
        n_tokens=n,
        decay_shift=rng.integers(1, 16, (heads, k)).astype(np.uint8),
        lower=lower,
        upper=upper,
        gamma=rng.integers(-128, 128, (heads, k)).astype(np.int8),
        gamma_shift=rng.integers(0, 9, (heads, k)).astype(np.uint8),
        readout=readout,
        theta=rng.integers(1, 4000, heads).astype(np.int16),
    )


def scalar_step(p: CoreParams, x: list, u: np.ndarray) -> np.ndarray:
    """docs/arithmetic.md in plain Python integers, one channel at a time; updates `x`."""

    def sat(v: int) -> int:
        return max(-32768, min(32767, v))

    d = p.head_dim
    out = np.zeros((p.n_tokens, p.heads * d), dtype=bool)
    for n in range(p.n_tokens):
        for h in range(p.heads):
            for c in range(d):
                old = [x[h][j][c] for j in range(p.k)]
                new = []
                for j in range(p.k):
                    v = old[j] - (old[j] >> int(p.decay_shift[h, j]))
                    if j > 0:
                        v += (int(p.lower[h, j]) * old[j - 1]) >> 8
                    if j < p.k - 1:
                        v += (int(p.upper[h, j]) * old[j + 1]) >> 8
                    if u[n, h * d + c]:
                        v += int(p.gamma[h, j]) << int(p.gamma_shift[h, j])
                    new.append(sat(v))
                y = sum(int(p.readout[h, j]) * new[j] for j in range(p.k))
                fire = y >= int(p.readout[h, 0]) * int(p.theta[h])
                if fire:
                    new[0] = sat(new[0] - int(p.theta[h]))
                out[n, h * d + c] = fire
                for j in range(p.k):
                    x[h][j][c] = new[j]
    return out


CORES = pytest.mark.parametrize("core_cls", [IntCore, JitCore], ids=["numpy", "jit"])


@CORES
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 2, 5), (3, 8, 3, 4)])
def test_intcore_matches_scalar_spec(shape: tuple[int, int, int, int], core_cls) -> None:
    heads, k, d, n = shape
    rng = np.random.default_rng(sum(shape))
    p = random_params(rng, heads, k, d, n)
    core = core_cls(p)
    x = [[[0] * d for _ in range(k)] for _ in range(heads)]
    for _ in range(40):
        u = rng.random((n, heads * d)) < rng.random()
        np.testing.assert_array_equal(core.step(u), scalar_step(p, x, u))
        np.testing.assert_array_equal(core.state(), np.array(x, dtype=np.int16))


@CORES
def test_saturation_both_ends(core_cls) -> None:
    """Charges of +-127 << 8 on slow compartments drive the state into both int16 limits."""
    ones = np.ones((1, 3), dtype=np.int8)
    p = CoreParams(
        heads=1, head_dim=1, k=3, n_tokens=4,
        decay_shift=ones.astype(np.uint8) * 15,
        lower=np.zeros((1, 3), np.int8), upper=np.zeros((1, 3), np.int8),
        gamma=np.array([[1, 127, -128]], np.int8),
        gamma_shift=np.full((1, 3), 8, np.uint8),
        readout=np.array([[1, 0, 0]], np.int8),
        theta=np.array([30000], np.int16),
    )  # fmt: skip
    core = core_cls(p)
    x = [[[0] for _ in range(3)]]
    u = np.ones((4, 1), dtype=bool)
    for _ in range(3):
        np.testing.assert_array_equal(core.step(u), scalar_step(p, x, u))
        np.testing.assert_array_equal(core.state(), np.array(x, dtype=np.int16))
    assert core.state()[0, 1, 0] == 32767 and core.state()[0, 2, 0] == -32768


@pytest.mark.parametrize(
    "shape,steps", [((1, 1, 1, 3), 1500), ((2, 4, 3, 5), 1500), ((4, 8, 4, 8), 600)]
)
def test_quantized_torch_bit_exact(shape: tuple[int, int, int, int], steps: int) -> None:
    """Thousands of random timesteps, batch of 2 (each element has its own IntCore)."""
    heads, k, d, n = shape
    rng = np.random.default_rng(100 + sum(shape))
    p = random_params(rng, heads, k, d, n)
    tq = QuantizedLRFDynCore(p)
    batch = 2
    ref = [IntCore(p) for _ in range(batch)]
    x = tq.init_state(batch)
    # start from random states too, so the whole int16 range is covered from the first step
    for b in range(batch):
        st = rng.integers(-32768, 32768, (heads, k, d)).astype(np.int16)
        ref[b].load_state(st)
        x[b] = torch.from_numpy(st.astype(np.int32))
    us = rng.random((steps, batch, n, heads * d)) < rng.random((steps, 1, 1, 1))
    s_all = []
    for t in range(steps):
        s, x = tq.step(torch.from_numpy(us[t]).float(), x)
        s_all.append(s.numpy().astype(bool))
    s_all = np.stack(s_all)
    for b in range(batch):
        for t in range(steps):
            np.testing.assert_array_equal(ref[b].step(us[t, b]), s_all[t, b], err_msg=f"t={t}")
        np.testing.assert_array_equal(ref[b].state(), x[b].numpy())
    assert 0 < s_all.mean() < 1


def test_blob_roundtrip_and_crc() -> None:
    p = random_params(np.random.default_rng(1), 3, 5, 7, 64)
    blob = p.to_blob()
    assert len(blob) == CoreParams.blob_size(3, 5)
    q = CoreParams.from_blob(blob)
    assert q.to_blob() == blob
    for name in ("decay_shift", "lower", "upper", "gamma", "gamma_shift", "readout", "theta"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    assert (q.heads, q.head_dim, q.k, q.n_tokens) == (3, 7, 5, 64)
    assert p.crc32() == zlib.crc32(blob)
    assert int.from_bytes(blob[5:7], "little") == ARITH_ID


def test_blob_errors() -> None:
    p = random_params(np.random.default_rng(2), 2, 4, 3, 8)
    blob = p.to_blob()
    with pytest.raises(ValueError, match="too short"):
        CoreParams.from_blob(blob[:10])
    with pytest.raises(ValueError, match="expected"):
        CoreParams.from_blob(blob[:-1])
    with pytest.raises(ValueError, match="magic"):
        CoreParams.from_blob(b"XXXX" + blob[4:])
    bad_arith = bytearray(blob)
    bad_arith[5:7] = (ARITH_ID + 1).to_bytes(2, "little")
    with pytest.raises(ValueError, match="arithmetic ID"):
        CoreParams.from_blob(bytes(bad_arith))
    zero_shift = bytearray(blob)
    zero_shift[16] = 0  # first decay shift
    with pytest.raises(ValueError, match="decay_shift"):
        CoreParams.from_blob(bytes(zero_shift))
    with pytest.raises(ValueError, match="readout"):
        bad = random_params(np.random.default_rng(3), 2, 4, 3, 8)
        bad.readout[0, 0] = 0
        CoreParams.from_blob(bad.to_blob())


def test_state_io_and_crc() -> None:
    rng = np.random.default_rng(4)
    p = random_params(rng, 2, 3, 4, 5)
    core = IntCore(p)
    core.step(rng.random((5, 8)) < 0.5)
    st = core.state()
    assert st.dtype == np.int16 and st.shape == (2, 3, 4)
    assert core.state_crc() == zlib.crc32(st.astype("<i2").tobytes())
    other = IntCore(p)
    other.load_state(st)
    u = rng.random((5, 8)) < 0.5
    np.testing.assert_array_equal(other.step(u), core.step(u))
    core.reset()
    assert not core.state().any()
    with pytest.raises(ValueError, match="shape"):
        core.load_state(np.zeros((2, 3, 5), np.int16))
    with pytest.raises(ValueError, match="input shape"):
        core.step(np.zeros((4, 8), bool))


def test_quantizer_maps_float_parameters() -> None:
    torch.manual_seed(0)
    att = LRFDyn(16, 2, (3, 3), k=4)
    with torch.no_grad():
        att.core.lower_raw.normal_()
        att.core.upper_raw.normal_()
        att.core.readout_rest.uniform_(-1.5, 1.5)
    p = quantize_lrf_dyn(att)
    core = att.core
    scale = float(p.theta[0]) / float(core.theta)
    assert scale == 2.0 ** round(np.log2(scale))
    with torch.no_grad():
        np.testing.assert_array_equal(p.decay_shift, core.decay_shift().numpy())
        lower, upper = core.couplings()
        np.testing.assert_allclose(p.lower / 256.0, lower.numpy(), atol=0.5 / 256 + 1e-9)
        np.testing.assert_allclose(p.upper / 256.0, upper.numpy(), atol=0.5 / 256 + 1e-9)
        charge = p.gamma.astype(float) * 2.0**p.gamma_shift
        np.testing.assert_allclose(charge / scale, core.gamma.numpy(), rtol=1 / 128, atol=1 / scale)
        c = p.readout / p.readout[:, :1].astype(float)
        err = np.abs(c - core.readout().numpy())
        assert (err <= 0.5 / p.readout[:, :1] + 1e-6).all()  # half a step of each head's C
    assert (p.n_tokens, p.heads, p.head_dim, p.k) == (9, 2, 8, 4)


def test_state_scale_follows_training_peak() -> None:
    att = LRFDyn(8, 2, (2, 2), k=3)
    with torch.no_grad():
        att.core.state_peak.copy_(torch.tensor([10.0, 0.5]))
    p = quantize_lrf_dyn(att)
    # range max(4 theta, peak) = (10, 4): scales 2**11 and 2**12 for theta = 1
    np.testing.assert_array_equal(p.theta, [2048, 4096])
    np.testing.assert_array_equal(quantize_lrf_dyn(att, state_range=100.0).theta, [256, 256])
    with pytest.raises(ValueError, match="state range"):
        quantize_lrf_dyn(att, state_range=0.5)


def test_injected_core_in_attention() -> None:
    """quantize_cores swaps the core; the layer's spikes then equal IntCore on the same u."""
    torch.manual_seed(3)
    att = LRFDyn(16, 2, (2, 3), k=4).eval()
    with torch.no_grad():
        for proj in (att.q, att.k, att.v):
            proj.proj.bn.weight.fill_(8.0)
    quantize_cores(att)
    assert isinstance(att.core, QuantizedLRFDynCore)
    seen: list[torch.Tensor] = []
    orig = att.core.step

    def spy(u: torch.Tensor, st: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, st = orig(u, st)
        seen.extend([u, s])
        return s, st

    att.core.step = spy
    x = (torch.rand(6, 1, 6, 16) < 0.4).float()
    with torch.no_grad():
        whole = att(x)
        st = att.init_state(1)
        outs = []
        for x_t in x:
            y, st = att.step(x_t, st)
            outs.append(y)
        stepped = torch.stack(outs)
    torch.testing.assert_close(stepped, whole, rtol=0, atol=1e-5)
    ref = IntCore(att.core.params)
    total = 0.0
    for u, s in zip(seen[0:12:2], seen[1:12:2], strict=True):
        np.testing.assert_array_equal(ref.step(u[0].numpy() > 0), s[0].numpy() > 0)
        total += float(u.sum())
    assert total > 0


def test_jit_core_equals_numpy_core_over_long_runs() -> None:
    """Many timesteps over the whole parameter range, with state loads and resets between."""
    rng = np.random.default_rng(17)
    for heads, k, d, n in [(4, 3, 16, 64), (2, 8, 5, 9), (3, 1, 7, 12)]:
        p = random_params(rng, heads, k, d, n)
        ref, jit = IntCore(p), JitCore(p)
        for t in range(60):
            u = rng.random((n, heads * d)) < rng.random()
            np.testing.assert_array_equal(jit.step(u), ref.step(u))
            assert jit.state_crc() == ref.state_crc()
            if t == 20:
                snap = rng.integers(-32768, 32768, ref.state().shape)
                ref.load_state(snap)
                jit.load_state(snap)
            if t == 40:
                ref.reset()
                jit.reset()
        np.testing.assert_array_equal(jit.state(), ref.state())
        with pytest.raises(ValueError, match="input shape"):
            jit.step(np.zeros((n + 1, heads * d), bool))
