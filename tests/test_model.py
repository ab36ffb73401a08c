"""The SpikingTransformer: step == forward for every attention key, explicit constant-size
state, configs and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import KEYS, attention_kwargs, excite
from torch import nn

from spikestream.pipeline import (
    SpikingTransformer,
    create_model,
    list_configs,
    load_checkpoint,
    save_checkpoint,
    state_nbytes,
)
from spikestream.pipeline.network.state import flat_state

SMALL = {"embed_dim": 32, "heads": 2, "stem_pool": (True, True), "num_classes": 5}
SIZES = [(16, 16), (24, 32)]


def frames(t: int, b: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Event-count frames (0, 1 or 2 events per pixel and polarity)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (t, b, 2, *size), generator=g).float() * (
        torch.rand(t, b, 2, *size, generator=g) < 0.3
    )


def layer_inputs(model: nn.Module, fn) -> dict[str, torch.Tensor]:
    calls: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        return lambda _m, args, _o: calls.setdefault(name, []).append(args[0].detach().flatten())

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        out = fn()
    finally:
        for h in handles:
            h.remove()
    return out, {k: torch.cat(v) for k, v in calls.items()}


def is_spikes(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1) | (x == -1)).all())


def step_scan(model: SpikingTransformer, x: torch.Tensor) -> torch.Tensor:
    state = model.init_state(x.shape[1])
    out = []
    for frame in x:
        logits, state = model.step(frame, state)
        out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("key", KEYS)
def test_step_equals_forward(key: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=size, **SMALL))
    assert model.num_tokens == (size[0] // 4) * (size[1] // 4)
    x = frames(5, 2, size)
    with torch.no_grad():
        y_step, in_step = layer_inputs(model, lambda: step_scan(model, x))
        y_fwd, in_fwd = layer_inputs(model, lambda: model(x))
    assert y_step.shape == (5, 2, 5)
    torch.testing.assert_close(y_step, y_fwd, rtol=0, atol=1e-5)
    assert in_step.keys() == in_fwd.keys()
    for name in in_step:
        a, b = in_step[name], in_fwd[name]
        if is_spikes(a) or is_spikes(b):
            assert torch.equal(a, b), f"spikes into {name} differ"
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # the comparison is not vacuous: spikes reach the stem, attention output and MLP
    for name in ("sps.stages.1.conv", "blocks.0.attn.proj.linear", "blocks.0.fc2.linear"):
        if name in in_step:
            assert 0 < in_step[name].abs().mean() < 1, name


@pytest.mark.parametrize("layout", ["spikestream", "spikformer", "ms"])
@pytest.mark.parametrize("key", KEYS)
def test_donated_step_is_the_same_step_in_place(key: str, layout: str) -> None:
    """`step(..., donate=True)` gives the same logits and state, bit for bit, and writes the
    membranes into the state it was given (most of the state's bytes); without it the state
    passed in is left as it was."""
    torch.manual_seed(0)
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=(16, 16),
                                layout=layout, **SMALL))
    x = frames(6, 2, (16, 16), seed=1)
    kept, given = model.init_state(2), model.init_state(2)
    with torch.inference_mode():
        for frame in x:
            before = {k: v.clone() for k, v in flat_state(kept).items()}
            ptrs = {k: v.data_ptr() for k, v in flat_state(given).items()}
            y, kept_new = model.step(frame, kept)
            y_d, given = model.step(frame, given, donate=True)
            assert all(torch.equal(v, before[k]) for k, v in flat_state(kept).items())
            kept = kept_new
            assert torch.equal(y, y_d)
            new = flat_state(given)
            assert new.keys() == flat_state(kept).keys()
            assert all(torch.equal(new[k], v) for k, v in flat_state(kept).items())
            reused = sum(v.nbytes for k, v in new.items() if v.data_ptr() == ptrs[k])
            assert reused >= 0.8 * state_nbytes(given)
    assert any(v.abs().sum() > 0 for v in flat_state(given).values())  # the state moved


def test_statten_chunk_mode_model_refuses_to_step() -> None:
    model = create_model("tiny", "statten", input_size=(16, 16), **SMALL).eval()
    assert not model.causal
    x = frames(4, 1, (16, 16))
    assert model(x).shape == (4, 1, 5)
    with pytest.raises(RuntimeError, match="causal"):
        model.step(x[0], model.init_state(1))
    assert create_model("tiny", "statten", {"mode": "causal"}, **SMALL).causal


@pytest.mark.parametrize("key", KEYS)
def test_state_is_constant_in_size(key: str) -> None:
    """State bytes, keys, shapes and dtypes after 10 steps equal those after 500 steps."""
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=(8, 8),
                                embed_dim=8, heads=1, stem_pool=(True,), mlp_ratio=1))
    x = frames(1, 1, (8, 8))[0]
    state = model.init_state(1)
    layout = {k: (v.shape, v.dtype) for k, v in flat_state(state).items()}
    with torch.inference_mode():
        for t in range(1, 501):
            _, state = model.step(x, state)
            if t == 10:
                at10 = (state_nbytes(state),
                        {k: (v.shape, v.dtype) for k, v in flat_state(state).items()})
    assert at10 == (state_nbytes(state), layout)
    assert all(torch.isfinite(v).all() for v in flat_state(state).values())


@pytest.mark.slow
@pytest.mark.parametrize("key", ["sssa", "statten", "lrf_dyn"])
def test_state_is_constant_at_step_100000(key: str) -> None:
    model = excite(create_model("tiny", key, attention_kwargs(key), input_size=(4, 4),
                                embed_dim=8, heads=1, stem_pool=(True,), mlp_ratio=1))
    x = frames(1, 1, (4, 4))[0]
    state = model.init_state(1)
    with torch.inference_mode():
        for t in range(1, 100_001):
            _, state = model.step(x, state)
            if t == 10:
                at10 = state_nbytes(state)
    assert state_nbytes(state) == at10 == state_nbytes(model.init_state(1))


def test_configs_and_overrides() -> None:
    assert {"tiny", "small", "spikformer-2-256"} <= set(list_configs())
    big = create_model("spikformer-2-256", "ssa")
    assert big.num_tokens == 64 and big.input_size == (128, 128) and big.time_steps == 16
    assert big.blocks[0].attn.heads == 16 and big.blocks[0].attn.dim == 256 and len(big.blocks) == 2
    m = create_model("tiny", "sdsa", {"dvs_pool": True}, input_size=(32, 48), in_channels=1,
                     num_classes=3, embed_dim=16, depth=2, heads=4, time_steps=5)
    assert m.num_tokens == 4 * 6 and m.grid == (4, 6) and len(m.blocks) == 2
    assert m(torch.zeros(5, 2, 1, 32, 48)).shape == (5, 2, 3)
    assert json.loads(json.dumps(m.config)) == m.config
    assert m.attention_key == "sdsa" and m.config["attention_kwargs"] == {"dvs_pool": True}
    with pytest.raises(ValueError, match="unknown model config"):
        create_model("huge")
    with pytest.raises(ValueError, match="unknown model config keys"):
        create_model("tiny", embed_dims=32)
    with pytest.raises(ValueError, match="unknown attention"):
        create_model("tiny", "softmax")
    with pytest.raises(ValueError, match="cannot be halved"):
        create_model("tiny", input_size=(20, 20))
    with pytest.raises(ValueError, match=r"\(P, H, W\)"):
        m(torch.zeros(5, 2, 2, 32, 48))


def test_checkpoint_round_trip(tmp_path) -> None:
    model = excite(create_model("tiny", "lrf_ssa", input_size=(16, 16), **SMALL))
    weights, config = save_checkpoint(tmp_path / "m.pt", model, {"epoch": 3})
    assert config.name == "m.json" and json.loads(config.read_text())["config"] == model.config
    loaded, extra = load_checkpoint(weights)
    assert extra == {"epoch": 3} and loaded.attention_key == "lrf_ssa" and not loaded.training
    x = frames(3, 1, (16, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    config.unlink()
    with pytest.raises(FileNotFoundError, match="m.json"):
        load_checkpoint(weights)


def test_synaptic_operation_counts() -> None:
    from spikestream.pipeline.network.energy import SynOpCounter, count_synops

    lin, conv = nn.Linear(8, 5), nn.Conv2d(2, 3, 3, padding=1)
    spikes_in = torch.zeros(4, 8)
    spikes_in[0, :3] = 1  # 3 of 32 inputs spike
    real_in = torch.randn(4, 8)
    frame = torch.zeros(1, 2, 6, 6)
    frame[0, 0, 2, 2] = 1.0
    with torch.no_grad(), SynOpCounter() as c:
        lin(spikes_in)
    assert (c.ac, c.mac) == (4 * 8 * 5 * 3 / 32, 0)
    with torch.no_grad(), SynOpCounter() as c:
        lin(real_in)
        conv(frame * 2.5)  # real-valued input: every product is a MAC
    assert (c.ac, c.mac) == (0, 4 * 8 * 5 + 36 * 3 * 18)
    with torch.no_grad(), SynOpCounter() as c:
        conv(frame)
    assert (c.ac, c.mac) == (36 * 3 * 18 / 72, 0)

    # the whole model: the first convolution sees event counts (MAC), the rest spikes (AC)
    model = excite(create_model("tiny", "ssa", input_size=(16, 16), **SMALL))
    x = frames(3, 1, (16, 16)) * 1.5
    ac, mac = count_synops(model, x)
    first = model.sps.stages[0].conv
    head = model.head
    assert mac == 16 * 16 * first.out_channels * 2 * 9 + head.in_features * head.out_features
    assert ac > 0


def test_model_info_command(capsys) -> None:
    from spikestream.cli import main

    assert main(["model-info", "--config", "tiny", "--attention", "sdsa", "--random", "0.1",
                 "--timesteps", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = create_model("tiny", "sdsa")
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["num_tokens"] == 64 and info["ac_per_step"] > 0  # binary frames: AC only
    expected = (info["ac_per_step"] * 0.9 + info["mac_per_step"] * 4.6) * 1e-6
    assert abs(info["energy_uj_per_step"] - expected) < 1e-9


@pytest.mark.parametrize(("stride", "pool", "layout"), [
    (1, (True, True, False), "spikestream"), (2, (False, True, True), "spikestream"),
    (4, (True, False, True), "spikformer"), (8, (False, False, True), "spikestream"),
    (1, (True, True, True), "ms"),
])
def test_donated_stem_in_bands_is_the_same_step(monkeypatch, stride, pool, layout) -> None:
    """A donated step computes large stem maps a band of rows at a time (`stem.BAND_BYTES`,
    set small here so that every stage goes by 2-row bands, an odd number of them included):
    the same logits and state, bit for bit, as the step over whole maps."""
    from spikestream.pipeline.network import stem

    torch.manual_seed(0)
    size = (24 * stride, 24 * stride) if stride > 1 else (24, 24)
    model = excite(create_model("tiny", "lrf_dyn", input_size=size, stem_stride=stride,
                                stem_pool=pool, layout=layout, embed_dim=32, heads=2,
                                num_classes=5), seed=3)
    x = frames(4, 1, size, seed=2)
    whole, banded = model.init_state(1), model.init_state(1)
    bands = []
    real = stem.StemStage._step_in_bands

    def spy(self, inp, v):
        bands.append(v.shape)
        return real(self, inp, v)

    with torch.inference_mode():
        for frame in x:
            want, whole = model.step(frame, whole)
            monkeypatch.setattr(stem, "BAND_BYTES", 1)
            monkeypatch.setattr(stem.StemStage, "_step_in_bands", spy)
            got, banded = model.step(frame, banded, donate=True)
            monkeypatch.undo()
            assert torch.equal(got, want)
            for k, v in flat_state(whole).items():
                assert torch.equal(flat_state(banded)[k], v), k
    assert bands  # the banded path ran
    assert any(v.abs().sum() > 0 for k, v in flat_state(banded).items() if k.startswith("stem"))
