"""Every registered attention mechanism: stepwise == whole-sequence, causality, and the
mechanism-specific facts (STAtten chunks, SSA reassociation, ternary V, SSSA's constant state)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import KEYS, excite
from model_helpers import attention_kwargs as streaming_kwargs
from torch import nn

from spikestream.pipeline.network.attention import ATTENTION, LocalRF, create_attention
from spikestream.pipeline.network.model import state_nbytes

DIM, HEADS, T, B = 16, 2, 6, 2
GRIDS = [(2, 3), (4, 4)]






def spikes(shape: tuple[int, ...], rate: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < rate).float()


class LayerInputs:
    """Records the input of every Linear/Conv2d call, flattened, per module name."""

    def __init__(self, module: nn.Module) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {}
        self.handles = [
            m.register_forward_hook(self._hook(name))
            for name, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))
        ]

    def _hook(self, name: str):
        def hook(_m, args, _out):
            self.calls.setdefault(name, []).append(args[0].detach().flatten())

        return hook

    def collect(self) -> dict[str, torch.Tensor]:
        for h in self.handles:
            h.remove()
        return {k: torch.cat(v) for k, v in self.calls.items()}


def is_spikes(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1) | (x == -1)).all())


def run_both(module, x: torch.Tensor):
    """(outputs, layer inputs) of the step scan and of forward."""
    rec = LayerInputs(module)
    state = module.init_state(x.shape[1])
    ys = []
    for x_t in x:
        y, state = module.step(x_t, state)
        ys.append(y)
    stepped = (torch.stack(ys), rec.collect())
    rec = LayerInputs(module)
    whole = (module(x), rec.collect())
    return stepped, whole


def assert_same_run(stepped, whole, x: torch.Tensor) -> None:
    (y_s, in_s), (y_f, in_f) = stepped, whole
    torch.testing.assert_close(y_s, y_f, rtol=0, atol=1e-5)
    assert in_s.keys() == in_f.keys()
    inner_spiking = 0
    for name in in_s:
        a, b = in_s[name], in_f[name]
        if is_spikes(a) or is_spikes(b):
            assert torch.equal(a, b), f"spikes into {name} differ"
            rate = a.abs().mean().item()
            if 0 < rate < 1 and a.numel() != x.numel():
                inner_spiking += 1
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    if any(a.numel() != x.numel() for a in in_s.values()):
        assert inner_spiking > 0, "no spikes reached the inner layers: the test would be vacuous"
    if "proj.linear" in in_s:  # the output projection receives the mechanism's spikes
        assert in_s["proj.linear"].abs().sum() > 0, "the attention neurons never fired"


def test_all_mechanisms_registered() -> None:
    for key in ("ssa", "sdsa", "statten", "a2os2a", "sssa", "lrf_ssa"):
        assert key in ATTENTION


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("key", KEYS)
def test_step_equals_forward(key: str, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = excite(create_attention(key, DIM, HEADS, grid, **streaming_kwargs(key)))
    x = spikes((T, B, grid[0] * grid[1], DIM))
    with torch.no_grad():
        stepped, whole = run_both(attn, x)
    assert stepped[0].shape == (T, B, grid[0] * grid[1], DIM)
    assert stepped[0].std() > 0
    assert_same_run(stepped, whole, x)


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [("sdsa", {"dvs_pool": True}), ("ssa", {"reassociate": True}), ("ssa", {"scale": 0.25}),
     ("a2os2a", {"reassociate": False}), ("statten", {"mode": "causal", "chunk": 2}),
     ("lrf_ssa", {"dilations": (1, 2)}), ("sssa", {"rates": 2})],
)
def test_options_step_equals_forward(key: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    grid = (3, 4)
    attn = excite(create_attention(key, DIM, HEADS, grid, **kwargs))
    x = spikes((T, B, 12, DIM))
    with torch.no_grad():
        stepped, whole = run_both(attn, x)
    assert_same_run(stepped, whole, x)


@pytest.mark.parametrize("key", KEYS)
def test_causal_mechanisms_ignore_the_future(key: str) -> None:
    torch.manual_seed(0)
    grid = (3, 3)
    attn = excite(create_attention(key, DIM, HEADS, grid, **streaming_kwargs(key)))
    x = spikes((T, B, 9, DIM))
    x2 = x.clone()
    x2[4:] = spikes((T - 4, B, 9, DIM), seed=5)
    with torch.no_grad():
        y, y2 = attn(x), attn(x2)
        st, st2 = attn.init_state(B), attn.init_state(B)
        for t in range(T):
            _, st = attn.step(x[t], st)
            _, st2 = attn.step(x2[t], st2)
    torch.testing.assert_close(y[:4], y2[:4], rtol=0, atol=0)
    assert any(not torch.equal(st[k], st2[k]) for k in st)  # the change did arrive


def test_state_is_constant_in_size() -> None:
    for key in KEYS:
        attn = excite(create_attention(key, DIM, HEADS, (2, 2), **streaming_kwargs(key)))
        state = attn.init_state(1)
        sizes = []
        with torch.no_grad():
            for t in range(40):
                _, state = attn.step(spikes((1, 4, DIM), seed=t), state)
                sizes.append({k: (v.shape, v.dtype) for k, v in state.items()})
        assert all(s == sizes[0] for s in sizes), key
        assert state_nbytes(state) == state_nbytes(attn.init_state(1)), key


def test_statten_chunk_mode_cannot_step_and_causal_mode_ends_chunks_alike() -> None:
    torch.manual_seed(0)
    grid, c = (3, 3), 3
    kw = {"chunk": c, "scale": 0.25}  # a larger scale than 1/(N c) so that SN_0.5 fires here
    chunked = excite(create_attention("statten", DIM, HEADS, grid, mode="chunk", **kw))
    causal = create_attention("statten", DIM, HEADS, grid, mode="causal", **kw)
    causal.load_state_dict(chunked.state_dict())
    causal.eval()
    assert not chunked.causal and causal.causal
    with pytest.raises(RuntimeError, match="not causal"):
        chunked.step(spikes((B, 9, DIM)), chunked.init_state(B))

    x = spikes((7, B, 9, DIM))  # chunks: steps 0-2, 3-5, 6
    with torch.no_grad():
        y_chunk, y_causal = chunked(x), causal(x)
        # the attention LIF is stateful, so compare the attention values that feed it
        a_chunk = chunk_attention_values(chunked, x, causal=False)
        a_causal = chunk_attention_values(causal, x, causal=True)
    for t in (2, 5, 6):  # the last step of each chunk sees the same steps in both modes
        torch.testing.assert_close(a_chunk[t], a_causal[t], rtol=0, atol=0)
    # steps before the end of a chunk see later steps in chunk mode only
    assert not torch.equal(a_chunk[3:5], a_causal[3:5])
    assert not torch.equal(y_chunk, y_causal)

    # chunk mode: a change at step 1 reaches step 0 of its chunk, but not the previous chunk
    x2 = x.clone()
    x2[4] = spikes((B, 9, DIM), seed=9)
    with torch.no_grad():
        a2 = chunk_attention_values(chunked, x2, causal=False)
    assert torch.equal(a2[:3], a_chunk[:3])
    assert not torch.equal(a2[3], a_chunk[3])


def chunk_attention_values(attn, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """`Q (K^T V)` summed over the chunk (chunk mode) or the chunk so far (causal), per step,
    recomputed independently of the module's own mixing code."""
    st = attn.init_state(x.shape[1])
    qs, ks, vs = [], [], []
    for x_t in x:
        q, k, v, st = attn.qkv(x_t, st)
        qs.append(q)
        ks.append(k)
        vs.append(v)
    out = []
    for t in range(x.shape[0]):
        c0 = t - t % attn.chunk
        c1 = t + 1 if causal else min(c0 + attn.chunk, x.shape[0])
        kv = torch.zeros_like(ks[0].transpose(-2, -1) @ vs[0])
        for u in range(c0, c1):
            kv = kv + ks[u].transpose(-2, -1) @ vs[u]
        out.append(qs[t] @ kv)
    return torch.stack(out)


@pytest.mark.parametrize("key", ["ssa", "lrf_ssa"])
def test_ssa_reassociation_gives_the_same_integers(key: str) -> None:
    torch.manual_seed(0)
    grid = (4, 4)
    explicit = excite(create_attention(key, DIM, HEADS, grid))
    reassoc = create_attention(key, DIM, HEADS, grid, reassociate=True)
    reassoc.load_state_dict(explicit.state_dict())
    reassoc.eval()
    x = spikes((T, B, 16, DIM))
    with torch.no_grad():
        (y1, in1), (y2, in2) = run_both(explicit, x)[1], run_both(reassoc, x)[1]
    assert torch.equal(in1["proj.linear"], in2["proj.linear"])  # spikes after SN_0.5
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-6)


def test_ssa_explicit_matrix_matches_a_direct_sum() -> None:
    """`(Q K^T) V` per head against a loop over tokens: a_n = sum_m (q_n . k_m) v_m."""
    attn = excite(create_attention("ssa", DIM, HEADS, (2, 2)))
    x = spikes((B, 4, DIM))
    with torch.no_grad():
        q, k, v, _ = attn.qkv(x, attn.init_state(B))
        from spikestream.pipeline.network.attention.ssa import ssa_product

        a = ssa_product(q, k, v, reassociate=False)
        for n in range(4):
            direct = sum((q[:, :, n] * k[:, :, m]).sum(-1, keepdim=True) * v[:, :, m]
                         for m in range(4))
            assert torch.equal(a[:, :, n], direct)


def test_a2os2a_values_are_ternary_and_keys_real() -> None:
    attn = excite(create_attention("a2os2a", DIM, HEADS, (3, 3)), seed=3)
    x = spikes((T, B, 9, DIM))
    with torch.no_grad():
        v = attn.v_lif(attn.v(x) * 3 - 1.5)
        k = torch.relu(attn.k(x))
    assert set(torch.unique(v).tolist()) == {-1.0, 0.0, 1.0}
    assert (k >= 0).all() and not is_spikes(k)
    explicit = create_attention("a2os2a", DIM, HEADS, (3, 3), reassociate=False)
    explicit.load_state_dict(attn.state_dict())
    explicit.eval()
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), attn(x), rtol=0, atol=1e-5)


def test_sssa_kernel_is_lower_triangular_and_matches_the_recursion() -> None:
    attn = create_attention("sssa", DIM, HEADS, (2, 2))
    m = attn.kernel(5)
    assert m.shape == (HEADS, 5, 5)
    assert torch.equal(torch.triu(m, diagonal=1), torch.zeros_like(m))
    assert (torch.diagonal(m, dim1=1, dim2=2) > 0).all()
    # H[t] from the recursion on an impulse at t' = 0 is the kernel's first column
    lam = torch.sigmoid(attn.lam_logit)
    h = torch.zeros(HEADS, attn.rates)
    col = []
    for t in range(5):
        h = lam * h + (1.0 if t == 0 else 0.0)
        col.append((attn.weight * h).sum(-1))
    torch.testing.assert_close(torch.stack(col, 1), m[:, :, 0].detach())


def test_lrf_ssa_without_local_branch_is_ssa() -> None:
    grid = (3, 4)
    ssa = excite(create_attention("ssa", DIM, HEADS, grid))
    lrf = create_attention("lrf_ssa", DIM, HEADS, grid, lam=0.0)
    missing, unexpected = lrf.load_state_dict(ssa.state_dict(), strict=False)
    assert not unexpected and all(k == "lam" or k.startswith("local.") for k in missing)
    lrf.eval()
    x = spikes((T, B, 12, DIM))
    with torch.no_grad():
        torch.testing.assert_close(lrf(x), ssa(x), rtol=0, atol=0)
        lrf.lam.fill_(0.5)
        assert not torch.equal(lrf(x), ssa(x))


def test_local_rf_reaches_dilated_neighbours_only() -> None:
    gh, gw = 11, 11
    local = LocalRF(2, (gh, gw))
    with torch.no_grad():
        for conv in local.convs:
            conv.weight.fill_(1.0)
        v = torch.zeros(1, gh * gw, 2)
        v[0, 5 * gw + 5] = 1.0  # an impulse at the centre
        out = local(v)[0, :, 0].reshape(gh, gw)
    offsets = {(dy * d, dx * d) for d in (1, 3, 5) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    for y in range(gh):
        for x in range(gw):
            expected = sum(1 for d in (1, 3, 5) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                           if (dy * d, dx * d) == (y - 5, x - 5))
            assert out[y, x].item() == expected, (y, x)
    assert int((out > 0).sum()) == len(offsets)
    with pytest.raises(ValueError, match="grid"):
        local(torch.zeros(1, 10, 2))
