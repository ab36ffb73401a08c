"""Block layouts as config data: the papers' configs, their parameter counts, the stem and head
variants, step == forward for every layout and key, and the engines' refusal of new layouts."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from model_helpers import KEYS, excite

from spikestream.pipeline import create_model, make_step
from spikestream.pipeline.engines.numba_step import unsupported
from spikestream.pipeline.network.attention import create_attention
from spikestream.pipeline.network.neurons import TernaryLIF

# the official models' parameters used by their forward pass (see the configs' comments)
PAPER_PARAMETERS = {"spikformer-2-256": 2_566_923, "sdt-2-256": 2_566_923,
                    "statten-2-256": 2_590_053}
SMALL = {"embed_dim": 32, "heads": 4, "depth": 2, "num_classes": 5, "time_steps": 4}


def frames(t: int, b: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (t, b, 2, *size), generator=g).float() * (
        torch.rand(t, b, 2, *size, generator=g) < 0.3)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", sorted(PAPER_PARAMETERS))
def test_paper_configs_have_the_official_parameter_counts(config):
    model = create_model(config)
    assert n_params(model) == PAPER_PARAMETERS[config]


def test_paper_configs_shapes_and_attention_defaults():
    spk = create_model("spikformer-2-256")
    assert spk.grid == (8, 8) and spk.blocks[0].attn.heads == 16 and spk.num_classes == 11
    assert spk.blocks[0].attn.scale == 0.25 and spk.config["layout"] == "spikformer"
    assert create_model("spikformer-2-256", "lrf_ssa").blocks[0].attn.scale == 0.25
    assert create_model("spikformer-2-256", "ssa", {"scale": 0.5}).blocks[0].attn.scale == 0.5
    sdt = create_model("sdt-2-256")
    assert sdt.grid == (16, 16) and sdt.blocks[0].attn.heads == 8 and sdt.attention_key == "sdsa"
    assert hasattr(sdt, "head_lif") and not hasattr(spk, "head_lif")
    st = create_model("statten-2-256")
    assert st.grid == (16, 16) and st.input_size == (64, 64) and st.num_classes == 101
    attn = st.blocks[0].attn
    assert (attn.chunk, attn.dvs, attn.mode) == (4, True, "chunk")
    assert attn.scale == 1 / 1024  # 1 / (N c) with N = 16 x 16 tokens and c = 4
    # the default layout is the one configs and checkpoints without a layout key had
    assert create_model("tiny").config["layout"] == "spikestream"


CASES = [(layout, key) for layout in ("spikformer", "ms") for key in KEYS]


@pytest.mark.parametrize(("layout", "key"), CASES)
def test_step_equals_forward_in_every_layout(layout, key):
    kwargs = {"mode": "causal", "dvs": True} if key == "statten" else {}
    model = create_model("tiny", key, kwargs, layout=layout, input_size=(16, 16),
                         stem_pool=(False, True, True), **SMALL)
    excite(model, seed=3)
    x = frames(4, 2, (16, 16), seed=1)
    with torch.no_grad():
        whole = model(x)
        state = model.init_state(2)
        stepped = []
        for frame in x:
            logits, state = model.step(frame, state)
            stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped), whole, rtol=1e-5, atol=1e-5)


def _lif_seq(x: torch.Tensor, v_th: float = 1.0) -> torch.Tensor:
    """The LIF of DESIGN.md over the leading time axis, written out."""
    v = torch.zeros_like(x[0])
    out = []
    for xt in x:
        h = v + (xt - v) / 2.0
        s = (h >= v_th).float()
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def test_ms_stem_pools_before_its_last_neuron_and_adds_the_feature():
    """MS-SPS against a functional restatement: conv-BN-LIF(-pool) stages, then the last one
    conv-BN-pool = f, tokens `f + BN(conv(LIF(f)))` with no neuron on the embedding."""
    model = excite(create_model("tiny", "sdsa", layout="ms", input_size=(16, 16),
                                stem_pool=(False, True, True), **SMALL), seed=2)
    x = frames(3, 1, (16, 16), seed=4)

    def bn(m, z):
        return F.batch_norm(z, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = x
    stages = model.sps.stages
    for stage, down in zip(stages[:-1], (False, True), strict=True):
        z = torch.stack([bn(stage.bn, F.conv2d(ht, stage.conv.weight, padding=1)) for ht in h])
        h = _lif_seq(z)
        if down:
            h = torch.stack([F.max_pool2d(ht, 3, 2, 1) for ht in h])
    last = stages[-1]
    f = torch.stack([F.max_pool2d(bn(last.bn, F.conv2d(ht, last.conv.weight, padding=1)), 3, 2, 1)
                     for ht in h])
    s = _lif_seq(f)
    r = torch.stack([bn(model.sps.rpe.bn, F.conv2d(st, model.sps.rpe.conv.weight, padding=1))
                     for st in s])
    want = (f + r).flatten(-2).transpose(-1, -2)
    with torch.no_grad():
        got = model.sps(x)
    assert (s.sum() > 0) and torch.allclose(got, want, atol=1e-5)


def test_head_lif_reads_the_token_mean():
    model = excite(create_model("tiny", "sdsa", layout="ms", input_size=(16, 16),
                                stem_pool=(False, True, True), **SMALL), seed=5)
    x = frames(4, 1, (16, 16), seed=6)
    with torch.no_grad():
        feats = model.sps(x)
        for block in model.blocks:
            feats = block(feats)
        want = model.head(_lif_seq(feats.mean(dim=2)))
        torch.testing.assert_close(model(x), want)


def test_numba_runs_every_layout_and_the_papers_options():
    """`auto` picks numba for every layout and for the options the papers' code uses (the
    ternary neuron's decay form, STAtten's DVS branch); each checked against eager steps."""
    x = torch.zeros(1, 2, 16, 16)
    for layout in ("spikformer", "ms"):
        model = create_model("tiny", "ssa", layout=layout, input_size=(16, 16),
                             stem_pool=(False, True, True), **SMALL)
        assert unsupported(model) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert make_step(model, x, "auto").mode == "numba"
    for key, options in (("a2os2a", {"ternary_decay": 0.25, "ternary_threshold": 0.5}),
                         ("statten", {"mode": "causal", "dvs": True})):
        model = excite(create_model("tiny", key, options, input_size=(16, 16),
                                    stem_pool=(False, True, True), **SMALL), seed=1)
        assert unsupported(model) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert make_step(model, x, "numba").mode == "numba"


def test_ternary_neuron_decay_and_threshold():
    """`H = decay V + X`, +1 at H >= th, -1 at H <= -th, reset on either (no input scaling)."""
    neuron = TernaryLIF(v_th=0.5, decay=0.25)
    xs = torch.tensor([[0.3], [0.3], [-0.6], [0.1], [-0.45], [-0.4]])
    v, want = 0.0, []
    for x in xs[:, 0].tolist():
        h = 0.25 * v + x
        s = 1.0 if h >= 0.5 else (-1.0 if h <= -0.5 else 0.0)
        v = 0.0 if s else h
        want.append([s])
    assert neuron(xs).tolist() == want
    assert want == [[0.0], [0.0], [-1.0], [0.0], [0.0], [-1.0]]
    attn = create_attention("a2os2a", 8, 2, (2, 2), ternary_decay=0.25, ternary_threshold=0.5)
    assert (attn.v_lif.decay, attn.v_lif.v_th) == (0.25, 0.5)


def test_statten_dvs_branch_against_its_equations():
    """Chunk mode with the DVS branch: pooled Q, K, V; the c * N tokens of a chunk attend to
    each other, `Q (K^T V) / (N c)`; then `y = SN_0.5(a) * pool(x) + pool(x)`, projected."""
    grid, dim, heads, chunk = (3, 4), 8, 2, 2
    attn = excite(create_attention("statten", dim, heads, grid, chunk=chunk, dvs=True), seed=7)
    g = torch.Generator().manual_seed(8)
    x = (torch.rand(4, 1, 12, dim, generator=g) < 0.5).float()

    def pool(t):  # [T, B, N, D] over the 3 x 4 grid
        img = t.reshape(-1, *grid, dim).permute(0, 3, 1, 2)
        return F.max_pool2d(img, 3, 1, 1).permute(0, 2, 3, 1).reshape(t.shape)

    with torch.no_grad():
        q, k, v = (pool(m(x)) for m in (attn.q, attn.k, attn.v))
        a = torch.zeros_like(q)
        d = dim // heads
        for c0 in range(0, 4, chunk):
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                kc = k[c0:c0 + chunk, :, :, sl].transpose(0, 1).reshape(1, -1, d)
                vc = v[c0:c0 + chunk, :, :, sl].transpose(0, 1).reshape(1, -1, d)
                qc = q[c0:c0 + chunk, :, :, sl]
                a[c0:c0 + chunk, :, :, sl] = qc @ (kc.transpose(-1, -2) @ vc) / (12 * chunk)
        s = _lif_seq(a, 0.5)
        xp = pool(x)
        want = attn.proj(s * xp + xp)
        got = attn(x)
    assert s.sum() > 0 and (s * xp).sum() > 0
    torch.testing.assert_close(got, want)
