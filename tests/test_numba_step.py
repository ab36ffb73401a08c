"""The numba engine: each kernel against torch's own operator, and whole steps against eager
`model.step` on a simulated gesture clip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import KEYS, attention_kwargs, excite

from spikestream.devices import gesture_clip
from spikestream.firmware_bridge.quantize import quantize_cores
from spikestream.pipeline import create_model
from spikestream.pipeline.binning import to_frames
from spikestream.pipeline.engines import make_step
from spikestream.pipeline.engines import numba_attention as A
from spikestream.pipeline.engines import numba_attention_kernels as AK
from spikestream.pipeline.engines import numba_kernels as K
from spikestream.pipeline.engines.numba_step import NumbaStep, allocations_per_step, unsupported
from spikestream.pipeline.network.attention import LocalRF
from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore
from spikestream.pipeline.network.model import LAYOUTS
from spikestream.pipeline.network.state import flat_state, map_state


def sparse_maps(shape: tuple[int, ...], density: float, seed: int) -> np.ndarray:
    """Non-negative float32 maps with about `density` non-zeros, values 1-3 (event counts)."""
    rng = np.random.default_rng(seed)
    return ((rng.random(shape) < density) * rng.integers(1, 4, shape)).astype(np.float32)


#: a workspace with room for every kernel test here, and one with none (the kernels then
#: allocate what they take)
ROOMY, EMPTY = (1 << 18, 1 << 14), (0, 0)


@pytest.mark.parametrize("room", [ROOMY, EMPTY])
@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_conv_scatter_is_conv2d(stride, room):
    k = 3 if stride == 1 else stride + 1
    c_in, c_out, size = 3, 16, 32
    x = sparse_maps((c_in, size, size), 0.1, stride)
    w = np.random.default_rng(1).standard_normal((c_out, c_in, k, k)).astype(np.float32)
    want = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), stride=stride, padding=1)[0]
    out_h, out_w = want.shape[1:]
    acc = np.zeros((out_h * out_w, c_out), np.float32)
    ws = K.workspace(*room)
    K.conv_scatter(x.transpose(1, 2, 0), np.ascontiguousarray(w.transpose(1, 2, 3, 0)), stride,
                   acc, out_w, ws)
    assert ws[2][0] == ws[2][1] == 0 and ws[2][3] > 0  # its index scratch handed back
    got = acc.reshape(out_h, out_w, c_out).transpose(2, 0, 1)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)
    assert np.abs(got).sum() > 0


def test_linear_scatter_is_a_matrix_product():
    x = sparse_maps((64, 48), 0.2, 0)
    wt = np.random.default_rng(2).standard_normal((48, 80)).astype(np.float32)
    acc = np.zeros((64, 80), np.float32)
    K.linear_scatter(x, wt, acc, K.workspace(*ROOMY))
    np.testing.assert_allclose(acc, x @ wt, rtol=0, atol=1e-4)


def test_pools_are_torch_pools():
    x = sparse_maps((8, 16, 12), 0.3, 3)
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
    t = torch.from_numpy(x)[None]
    want_max = F.max_pool2d(t, 3, stride=2, padding=1)[0].numpy()
    want_avg = F.avg_pool2d(t, 2, stride=2)[0].numpy()
    got_max, got_avg = np.empty((2, 8, 6, 8), np.float32)
    K.max_pool_3s2(hwc, got_max, K.workspace(*ROOMY))
    K.avg_pool_2s2(hwc, got_avg)
    np.testing.assert_array_equal(got_max.transpose(2, 0, 1), want_max)
    np.testing.assert_array_equal(got_avg.transpose(2, 0, 1), want_avg)
    grid = sparse_maps((5, 7, 6), 0.3, 4)  # tokens [N, D] of a 5x7 grid
    tokens = np.ascontiguousarray(grid.reshape(35, 6))
    want = F.max_pool2d(torch.from_numpy(grid).permute(2, 0, 1)[None], 3, stride=1, padding=1)
    np.testing.assert_array_equal(AK.token_max_pool_3s1(tokens, 5, 7, K.workspace(*ROOMY)),
                                  want[0].permute(1, 2, 0).reshape(35, 6).numpy())


def test_ssa_scores_are_exact():
    rng = np.random.default_rng(5)
    q, k, v = ((rng.random((64, 32)) < 0.3).astype(np.float32) for _ in range(3))
    heads, scale = 4, np.float32(0.125)
    got = AK.ssa_scores(q, k, v, heads, scale, K.workspace(*ROOMY))
    split = [torch.from_numpy(a).reshape(64, heads, 8).transpose(0, 1) for a in (q, k, v)]
    want = ((split[0] @ split[1].transpose(-1, -2)) @ split[2] * 0.125).transpose(0, 1)
    np.testing.assert_array_equal(got, want.reshape(64, 32).numpy())  # integer sums: exact
    assert got.max() > 1


@pytest.fixture(scope="module")
def clip_frames() -> torch.Tensor:
    """10 ms event-count frames of one simulated person performing a gesture, at 128x128."""
    events = gesture_clip(4, duration_s=0.8, sensor_size=(128, 128, 2), seed=3)
    frames = to_frames(events, (128, 128, 2), time_window=10_000)
    assert frames.shape[0] >= 70 and frames.sum() > 0
    return torch.from_numpy(frames.astype(np.float32))[:, None]


CASES = {
    # tiny at 128x128: 5x5 stride-4 first conv, max-pools
    "ssa": ("ssa", {}, {}),
    "sdsa-dvs-pool": ("sdsa", {"dvs_pool": True}, {}),
    # stride 1 at 64x64 with average pooling and two blocks
    "ssa-avg-deep": ("ssa", {"scale": 0.25}, {"pool": "avg", "depth": 2, "input_size": 64}),
    # the dendritic core's token scan and the local field, with two blocks of their own weights
    "lrf_dyn": ("lrf_dyn", {}, {"depth": 2}),
    "sdsa": ("sdsa", {}, {}),
    "lrf_ssa": ("lrf_ssa", {"scale": 0.25}, {}),
    "a2os2a": ("a2os2a", {}, {}),
    "a2os2a-explicit": ("a2os2a", {"reassociate": False}, {}),
    "sssa": ("sssa", {}, {}),
    "statten-causal": ("statten", {"mode": "causal", "chunk": 3}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_numba_step_follows_eager_over_a_gesture_clip(case, clip_frames):
    key, kwargs, overrides = CASES[case]
    torch.manual_seed(0)
    overrides = {"input_size": 128, **overrides}
    model = excite(create_model("tiny", key, attention_kwargs=kwargs, **overrides)).eval()
    size = model.input_size[0]
    frames = clip_frames if size == 128 else F.avg_pool2d(clip_frames[:, 0], 2)[:, None] * 4
    fast = NumbaStep(model)
    eager, flat = model.init_state(1), fast.init_state(1)
    logits, off, total = [], 0, 0
    with torch.inference_mode():
        for frame in frames:
            want, eager = model.step(frame, eager)
            got, flat = fast.step(frame, flat)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-4)
            mine, theirs = flat_state(fast.to_model_state(flat)), flat_state(eager)
            assert mine.keys() == theirs.keys()
            for k, v in theirs.items():
                # sums run in another order: equal to rounding, except where a membrane lay
                # within rounding of the threshold and fired in one of the two only
                off += int((mine[k] - v).abs().gt(1e-4).sum())
                total += v.numel()
            logits.append(want)
    assert off <= 1e-4 * total, f"{off} of {total} membrane values differ"
    assert torch.stack(logits).std(dim=0).max() > 0.1  # the clip drives the network
    spikes = sum(int((v == 0).sum()) for v in flat_state(eager).values())  # reset membranes: spikes
    assert spikes > 0


def test_flat_state_round_trips_the_model_state():
    torch.manual_seed(0)
    model = create_model("tiny", input_size=128).eval()
    fast = NumbaStep(model)
    g = torch.Generator().manual_seed(1)
    state = map_state(lambda v: torch.randn(v.shape, generator=g), model.init_state(1))
    flat = fast.from_model_state(state)
    assert flat.shape == fast.init_state(1).shape and flat.dtype == np.float32
    back, want = flat_state(fast.to_model_state(flat)), flat_state(state)
    assert back.keys() == want.keys()
    for k in want:
        assert torch.equal(back[k], want[k]), k
    # and the step reads it in that layout: a step from `state` equals eager's
    frame = torch.from_numpy(sparse_maps((1, 2, 128, 128), 0.06, 2))
    with torch.inference_mode():
        want, _ = model.step(frame, state)
        got, _ = fast.step(frame, flat)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-4)


def test_numba_step_rejects_what_it_cannot_run():
    model = create_model("tiny", input_size=32).eval()
    fast = NumbaStep(model)
    with pytest.raises(ValueError, match="shape"):
        fast.step(torch.zeros(1, 2, 16, 16), fast.init_state(1))
    with pytest.raises(ValueError, match="batch 1"):
        fast.init_state(2)
    # an lrf_dyn model whose cores were swapped for the integer core has no numba kernel
    lrf = quantize_cores(create_model("tiny", "lrf_dyn", input_size=32).eval())
    assert "QuantizedLRFDynCore" in unsupported(lrf)
    with pytest.raises(ValueError, match="lrf_dyn"):
        NumbaStep(lrf)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", KEYS)
def test_every_steppable_key_runs_on_numba(key, layout):
    """The registry covers every mechanism that can step, in every block layout; make_step
    checks each against eager steps on random sparse frames before it returns the numba
    step."""
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=32,
                                layout=layout), seed=2)
    assert unsupported(model) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_step(model, torch.zeros(1, 2, 32, 32), "numba").mode == "numba"


@pytest.mark.parametrize(("config", "options", "size"), [
    ("spikformer-2-256", {}, 64),  # SSA scale 0.25, biases, Spikformer blocks
    ("sdt-2-256", {}, 64),  # MS-SPS, membrane shortcut, head neuron
    ("statten-2-256", {"mode": "causal"}, 32),  # and STAtten's DVS branch
])
def test_the_papers_configs_run_on_numba(config, options, size):
    """The papers' models (smaller inputs, the same layers) step on numba like eager; each
    step compared from eager's state, all but rounding flips (`make_step`'s check)."""
    torch.manual_seed(0)
    model = excite(create_model(config, attention_kwargs=options, input_size=size), seed=2)
    frame = torch.from_numpy(sparse_maps((1, 2, size, size), 0.05, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step = make_step(model, frame, "numba")
    assert step.mode == "numba"
    state, eager = step.init_state(1), model.init_state(1)
    with torch.inference_mode():
        for _ in range(3):
            got, state = step.step(frame, state)
            want, eager = model.step(frame, eager)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_forced_check_excuses_a_rare_flip_and_catches_a_wrong_step():
    """`verify_step(forced=True)`: a step that differs from eager once (one membrane fired
    the other way, the logits moved) passes; one that differs at every step does not."""
    from spikestream.pipeline.engines import verify_step

    torch.manual_seed(0)
    model = excite(create_model("tiny", "ssa", input_size=32), seed=2).eval()
    frames = [torch.from_numpy(sparse_maps((1, 2, 32, 32), 0.1, i)) for i in range(8)]
    calls = []

    def flips_once(frame, state):
        logits, new = model.step(frame, state)
        calls.append(1)
        if len(calls) == 3:
            new["blocks"][0]["mlp_in"][0, 0, 0] += 1.0
            logits = logits + 0.01
        return logits, new

    def biased(frame, state):
        logits, new = model.step(frame, state)
        return logits + 0.01, new

    args = dict(atol=1e-4, rtol=1e-4, max_off=1e-3)
    assert verify_step(model, flips_once, frames, model.init_state(1), forced=True,
                       **args) is None
    calls.clear()
    assert "step 2" in verify_step(model, flips_once, frames, model.init_state(1), **args)
    assert "logits differ" in verify_step(model, biased, frames, model.init_state(1),
                                          forced=True, **args)


def test_statten_chunk_mode_is_refused():
    model = create_model("tiny", "statten", input_size=32)
    assert "not causal" in unsupported(model)


def test_make_step_picks_and_falls_back():
    frame = torch.zeros(1, 2, 32, 32)
    ssa = create_model("tiny", input_size=32)
    lrf = quantize_cores(create_model("tiny", "lrf_dyn", input_size=32).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto moves past an unsupported model quietly
        assert make_step(ssa, frame).mode == "numba"
        assert make_step(lrf, frame).mode == "frozen"
        assert make_step(ssa, frame, "eager").mode == "eager"
        assert make_step(ssa, frame, "torchscript").mode == "frozen"
    with pytest.warns(RuntimeWarning, match="lrf_dyn"):
        assert make_step(lrf, frame, "numba").mode == "frozen"
    with pytest.warns(RuntimeWarning, match="batch 1"):
        assert make_step(ssa, torch.zeros(2, 2, 32, 32), "numba").mode == "frozen"
    with pytest.raises(ValueError, match="engine"):
        make_step(ssa, frame, "fast")


def test_dendritic_scan_is_the_core():
    """The numba token scan against `DendriticCore.step`, couplings and readout randomised."""
    heads, d, k, n = 4, 8, 5, 60
    core = DendriticCore(heads, d, k=k, theta=1.0)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in (core.lower_raw, core.upper_raw, core.decay_logit):
            p.copy_(torch.randn(p.shape, generator=g))
        core.gamma.copy_(torch.rand(core.gamma.shape, generator=g) * 0.8 + 0.1)
        core.readout_rest.copy_(torch.randn(core.readout_rest.shape, generator=g) * 0.5)
    u = (torch.rand(1, n, heads * d, generator=g) < 0.4).float()
    x0 = torch.randn(1, heads, k, d, generator=g)
    with torch.inference_mode():
        want_s, want_x = core.step(u, x0)
        lower, upper = core.couplings()
        params = [A.f32(t) for t in (core.decays(), lower, upper, core.gamma, core.readout())]
    x_new = np.empty((heads * k, d), np.float32)
    got_s = AK.dendritic_scan(u[0].numpy(), x0[0].reshape(heads * k, d).numpy(), x_new, *params,
                             np.float32(1.0), heads, K.workspace(*ROOMY))
    np.testing.assert_array_equal(got_s, want_s[0].numpy())
    np.testing.assert_allclose(x_new.reshape(heads, k, d), want_x[0].numpy(), rtol=0, atol=1e-5)
    assert 0.05 < got_s.mean() < 0.95


def test_local_rf_is_the_dilated_convolutions():
    grid, dim = (6, 7), 12
    local = LocalRF(dim, grid, (1, 3, 5))
    x = torch.from_numpy(sparse_maps((42, dim), 0.3, 6))
    with torch.no_grad():
        want = local(x[None])[0].numpy()
        w = np.concatenate([A.f32(c.weight[:, 0].permute(1, 2, 0).reshape(9, -1))
                            for c in local.convs])
    got = AK.local_rf(x.numpy(), w, np.array(local.dilations, np.int64), *grid,
                      K.workspace(*ROOMY))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.abs(got).sum() > 0


def test_step_reuses_its_output_buffers():
    """A step writes into buffers it owns (two states, alternating; one logits tensor), so it
    allocates no state: the same logits and states as steps from fresh copies of the state,
    and tracemalloc's peak over a step stays below the state's size (numba's arrays and numpy's
    are traced)."""
    import tracemalloc

    torch.manual_seed(0)
    model = excite(create_model("tiny", "lrf_dyn", input_size=64), seed=3).eval()
    fast, peer = NumbaStep(model), NumbaStep(model)
    frames = [torch.from_numpy(sparse_maps((1, 2, 64, 64), 0.08, i)) for i in range(6)]
    copied, buffered = fast.init_state(1), fast.init_state(1)
    seen = []
    for frame in frames:
        want, copied = peer.step(frame, copied.copy())
        want = want.clone()
        copied = copied.copy()
        got, buffered = fast.step(frame, buffered)
        seen.append(buffered)
        assert torch.equal(got, want)
        np.testing.assert_array_equal(buffered, copied)
    assert seen[0] is seen[2] and seen[1] is seen[3] and seen[0] is not seen[1]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fast.step(frames[0], buffered)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < buffered.nbytes, (peak, buffered.nbytes)


@pytest.mark.parametrize("key", KEYS)
def test_steps_after_the_first_allocate_nothing(key):
    """Counted by numba's runtime (`allocations_per_step`): once the first step has sized the
    workspace a step allocates nothing, and without a workspace it does (the count can see
    an allocation); the steps still equal eager's."""
    torch.manual_seed(0)
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=32),
                   seed=2).eval()
    fast = NumbaStep(model)
    frame = torch.from_numpy(sparse_maps((1, 2, 32, 32), 0.1, 7))
    got, state = fast.step(frame, fast.init_state(1))
    with torch.inference_mode():
        want, st = model.step(frame, model.init_state(1))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state, fast.from_model_state(st), rtol=1e-4, atol=1e-5)
    assert fast.scratch_nbytes > 0
    assert allocations_per_step(fast, frame) == 0
    fast._floats, fast._ints, fast._cursor = K.workspace()  # no room: every take allocates
    assert allocations_per_step(fast, frame) > 0


def test_packed_arrays_come_back_as_views():
    """`pack_arrays` then `mat` / `conv_weights`: each array back, in its shape, as a view of
    the one flat array (no copy per step)."""
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (2, 3, 3, 4), (7,))]
    packed = K.pack_arrays(arrays)
    np.testing.assert_array_equal(K.mat(packed, 0), arrays[0])
    np.testing.assert_array_equal(K.conv_weights(packed, 1), arrays[1])
    np.testing.assert_array_equal(K.mat(packed, 2), arrays[2][:, None])
    assert np.shares_memory(K.mat(packed, 0), packed[0])
    with pytest.raises(ValueError, match="4-dimensional"):
        K.pack_arrays([np.zeros((1, 1, 1, 1, 1), np.float32)])
