"""The inference paths (no autograd: in-place batch norm and LIF updates, the reordered
`lrf_dyn` step, the strided max-pool, the strided stem) give exactly what the differentiable
path gives, and shipped checkpoint configs keep their stem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import KEYS, attention_kwargs, excite
from torch import nn
from torch.nn import functional as F

from spikestream.pipeline import LIF, SpikingTransformer, create_model
from spikestream.pipeline.network.attention import create_attention
from spikestream.pipeline.network.layers import TokenBN, batch_norm_
from spikestream.pipeline.network.model import max_pool_3s2_, normalize_config
from spikestream.pipeline.network.state import flat_state, map_state

WEIGHTS = Path(__file__).resolve().parents[1] / "pipeline" / "weights"






def spikes(*shape: int, p: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


def run_steps(module, xs, batch: int, grad: bool, **step_kw):
    """Step `module` over `xs`; with `grad` on the autograd path, else in inference mode."""
    state = module.init_state(batch)
    outs = []
    for x in xs:
        if grad:
            y, state = module.step(x, state, **step_kw)
            assert y.requires_grad  # really the differentiable path
            y, state = y.detach(), map_state(torch.Tensor.detach, state)
        else:
            with torch.inference_mode():
                y, state = module.step(x, state, **step_kw)
        outs.append(y)
    return torch.stack(outs), state


@pytest.mark.parametrize("key", KEYS)
def test_attention_inference_step_is_identical(key: str) -> None:
    att = excite(create_attention(key, 32, 4, (4, 6), **attention_kwargs(key)), seed=1)
    xs = spikes(6, 2, 24, 32)
    y_ref, st_ref = run_steps(att, xs, 2, grad=True)
    y, st = run_steps(att, xs, 2, grad=False)
    st, st_ref = flat_state(st), flat_state(st_ref)
    assert torch.equal(y, y_ref)
    assert st.keys() == st_ref.keys()
    for k in st:
        assert torch.equal(st[k], st_ref[k]), k
    # not vacuous: the membranes moved, and the output varies over tokens and time
    assert any(bool((v != 0).any()) for v in st.values())
    assert y.std() > 0


@pytest.mark.parametrize("key", ["ssa", "lrf_dyn", "sdsa"])
@pytest.mark.parametrize("pool,stride", [("max", 1), ("avg", 1), ("max", 2)])
def test_model_inference_step_is_identical(key: str, pool: str, stride: int) -> None:
    size = (16 * stride, 24 * stride)
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=size,
                                embed_dim=16, heads=2, stem_pool=(True, True), pool=pool,
                                stem_stride=stride, num_classes=5))
    xs = spikes(5, 2, 2, *size, seed=3) * 2
    y_ref, st_ref = run_steps(model, xs, 2, grad=True)
    y, st = run_steps(model, xs, 2, grad=False)
    assert torch.equal(y, y_ref)
    stem = st["stem"]["stages"]
    st, st_ref = flat_state(st), flat_state(st_ref)
    assert st.keys() == st_ref.keys()
    for k in st:
        assert torch.equal(st[k], st_ref[k]), k
    # every stem stage fired in some places and not in others
    for i in range(2):
        v = stem[i]
        assert 0 < (v == 0).float().mean() < 1


@pytest.mark.parametrize("numel", [300, 100_000])  # the small and the chunked large path
@pytest.mark.parametrize("tau,v_th", [(2.0, 1.0), (3.0, 0.7), (2.0, 0.5)])
def test_lif_inference_updates_equal_lif_step(numel: int, tau: float, v_th: float) -> None:
    lif = LIF(tau=tau, v_th=v_th)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(numel, generator=g) * 2
    v = torch.randn(numel, generator=g)
    x[:5], v[:5] = tau * v_th, 0.0  # H == v_th (exactly for tau = 2)
    x[5], v[5] = float("nan"), 0.0
    x[6], v[6] = float("inf"), 0.0
    s_ref, v_ref = lif.step(x, v)
    with torch.no_grad():
        s1, v1 = lif.step(x.clone(), v, consume=True)
        x_before = x.clone()
        s2, v2 = lif.step(x, v)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0, equal_nan=True)  # x untouched
    for s, vn in ((s1, v1), (s2, v2)):
        assert torch.equal(s, s_ref)
        torch.testing.assert_close(vn, v_ref, rtol=0, atol=0, equal_nan=True)
        assert vn[5].isnan() and vn[6].isnan()  # NaN stays NaN, inf * 0 is NaN as in LIF.step
        assert s[5] == 0 and s[6] == 1
        if tau == 2.0:  # x / tau == v_th exactly: fires
            assert s[:5].tolist() == [1.0] * 5
    assert 0.1 < s_ref.mean() < 0.9


@pytest.mark.parametrize("bn", [TokenBN(24), nn.BatchNorm2d(24)])
def test_batch_norm_in_place_equals_module(bn: nn.Module) -> None:
    excite(bn, seed=2)
    shape = (3, 10, 24) if isinstance(bn, TokenBN) else (3, 24, 5, 7)
    x = torch.randn(shape)
    ref = bn(x)
    y = x.clone()
    with torch.inference_mode():
        out = batch_norm_(bn, y)
    assert out.data_ptr() == y.data_ptr()  # written in place
    assert torch.equal(out, ref)
    # training mode uses batch statistics and updates the running ones: the module does it
    bn.train()
    mean_before = bn.running_mean.clone()
    with torch.no_grad():
        out = batch_norm_(bn, x.clone())
    assert not torch.equal(bn.running_mean, mean_before)
    channel = x.dim() - 1 if isinstance(bn, TokenBN) else 1
    batch_mean = out.mean(dim=tuple(i for i in range(x.dim()) if i != channel))
    torch.testing.assert_close(batch_mean, bn.bias.detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 16, 32, 32), (4, 2, 2)])
def test_strided_max_pool_equals_aten(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g)
    ref = F.max_pool2d(x.unsqueeze(0) if x.dim() == 3 else x, 3, stride=2, padding=1)
    out = max_pool_3s2_(x)
    assert torch.equal(out, ref.reshape(out.shape))
    b = x > 0.8  # bool spikes
    assert torch.equal(max_pool_3s2_(b).float(), max_pool_3s2_(b.float()))


def test_tiny_patchifies_large_inputs_to_its_native_grid() -> None:
    native = create_model("tiny", input_size=(64, 64))
    big = create_model("tiny", input_size=(128, 128))
    assert native.config["stem_stride"] == 1 and native.config["stem_pool"] == [True] * 3
    # 128x128: a 5x5 stride-4 conv, the last down-sampling dropped, the same 8x8 tokens
    assert big.config["stem_stride"] == 4 and big.config["stem_pool"] == [True, True, False]
    assert big.grid == native.grid == (8, 8)
    assert [shape[1] for shape in big.sps.stage_shapes] == [32, 16, 8]
    conv = big.sps.stages[0].conv
    assert conv.stride == (4, 4) and conv.kernel_size == (5, 5)
    assert model_cost(big) < 0.6 * model_cost(native)  # cheaper than at 64x64, not dearer
    # every input pixel reaches the first stage: a single event changes some neuron input
    for model in (big, create_model("tiny", input_size=(256, 256)), create_model(
            "tiny", input_size=(128, 128), stem_stride=2)):
        conv = model.sps.stages[0].conv
        nn.init.constant_(conv.weight, 1.0)
        # with unit weights, d(sum of outputs)/d(pixel) = number of windows covering it
        frame = torch.zeros(1, 2, *model.input_size, requires_grad=True)
        conv(frame).sum().backward()
        assert bool((frame.grad > 0).all()), conv
        assert conv(frame).shape[-2:] == tuple(n // conv.stride[0] for n in model.input_size)
    huge = create_model("tiny", input_size=(256, 256))
    assert huge.sps.stages[0].conv.stride == (8, 8) and huge.grid == (8, 8)
    assert huge.config["stem_pool"] == [True, True, False]
    # 8x native: stride 8 (the largest), every down-sampling kept
    widest = create_model("tiny", input_size=(512, 512))
    assert widest.config["stem_stride"] == 8 and widest.config["stem_pool"] == [True] * 3
    assert widest.grid == (8, 8)
    # the caller's choices win
    assert create_model("tiny", input_size=(128, 128), stem_stride=1).grid == (16, 16)
    own = create_model("tiny", input_size=(128, 128), stem_pool=(True, True, False))
    assert own.config["stem_stride"] == 2 and own.grid == (16, 16)
    assert create_model("tiny", input_size=(96, 96)).config["stem_stride"] == 1
    assert create_model("small").config["stem_stride"] == 1
    with pytest.raises(ValueError, match="stem_stride must be one of"):
        create_model("tiny", stem_stride=3)
    with pytest.raises(ValueError, match="divisible"):
        create_model("tiny", input_size=(63, 64), stem_stride=2)


def model_cost(model: SpikingTransformer) -> int:
    """Multiply-accumulates of the stem convs per step, counted from the layer shapes."""
    total = 0
    for stage, (c_out, h, w) in zip(model.sps.stages, model.sps.stage_shapes, strict=True):
        conv = stage.conv
        total += c_out * h * w * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return total


def test_strided_stem_step_equals_forward() -> None:
    model = excite(create_model("tiny", "lrf_dyn", input_size=(64, 64), stem_stride=4,
                                embed_dim=16, heads=2, stem_pool=(True, False),
                                num_classes=4))
    assert model.grid == (8, 8)
    xs = spikes(4, 1, 2, 64, 64, p=0.1, seed=9)
    with torch.no_grad():
        y_seq = model(xs)
    y_step, _ = run_steps(model, xs, 1, grad=False)
    torch.testing.assert_close(y_step, y_seq, rtol=0, atol=1e-5)
    assert y_seq.std() > 0


def test_stored_configs_without_stem_stride_keep_the_plain_stem() -> None:
    configs = [json.loads(p.read_text())["config"] for p in sorted(WEIGHTS.glob("*.json"))]
    old = {k: v for k, v in create_model("tiny").config.items() if k != "stem_stride"}
    for cfg in [old, *configs]:
        assert normalize_config(cfg)["stem_stride"] == cfg.get("stem_stride", 1)
        model = SpikingTransformer(cfg)
        conv = model.sps.stages[0].conv
        if cfg.get("stem_stride", 1) == 1:
            assert conv.stride == (1, 1) and conv.kernel_size == (3, 3)
