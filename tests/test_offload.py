"""`offload`: a model whose lrf_dyn cores run on emulated devices equals the quantized model."""

from __future__ import annotations

import copy

import pytest
import torch

from spikestream.firmware_bridge.offload import OffloadedCore, offload
from spikestream.firmware_bridge.quantize import quantize_cores
from spikestream.pipeline import create_model


def small_model(depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(
        "tiny", "lrf_dyn", input_size=(16, 16), embed_dim=16, heads=2, time_steps=4,
        stem_pool=(True, True, False), depth=depth,
    )  # fmt: skip
    with torch.no_grad():
        for name, mod in model.named_modules():  # lively Q/K/V so that the cores see input
            if name.endswith((".q.proj.bn", ".k.proj.bn", ".v.proj.bn")):
                mod.weight.fill_(3.0)
    # batch statistics in the batch norms (untrained running statistics silence the stem);
    # the float parts are the same on both sides, so the comparison stays exact
    return model.train()


@pytest.mark.parametrize("faults", ["", "?faults=drop=0.1,dup=0.1,flip=0.02&seed=3"])
def test_offloaded_equals_quantized(faults: str) -> None:
    model = small_model(depth=2)
    ref = quantize_cores(copy.deepcopy(model))
    dev = offload(copy.deepcopy(model), [f"spikeemu://{faults}"] * 2, timeout=0.05)
    cores = [m for m in dev.modules() if isinstance(m, OffloadedCore)]
    assert len(cores) == 2
    x = (torch.rand(5, 1, 2, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    seen = []
    orig = cores[0].step

    def spy(u: torch.Tensor, st: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, st = orig(u, st)
        seen.append(float(s.sum()))
        return s, st

    cores[0].step = spy
    with torch.no_grad():
        want = ref(x)
        got = dev(x)
        stepped = {}
        for name, m in (("ref", ref), ("dev", dev)):
            state = m.init_state(1)
            outs = []
            for frame in x:
                logits, state = m.step(frame, state)
                outs.append(logits)
            stepped[name] = torch.stack(outs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(stepped["dev"], stepped["ref"], rtol=0, atol=0)
    assert sum(seen) > 0  # the device fired
    link = cores[0].link
    assert (link.retransmits > 0) if faults else (link.lost == 0 and link.retransmits == 0)


def test_offload_errors() -> None:
    model = small_model(depth=2)
    with pytest.raises(ValueError, match="one port or Link per layer"):
        offload(copy.deepcopy(model), "spikeemu://")
    dev = offload(small_model(depth=1), "spikeemu://")
    with pytest.raises(ValueError, match="one stream"):
        dev.init_state(2)
    state = dev.init_state(1)
    frame = torch.zeros(1, 2, 16, 16)
    with torch.no_grad():
        _, new = dev.step(frame, state)
        with pytest.raises(RuntimeError, match="can only advance"):
            dev.step(frame, state)  # the old state again: the device has moved on
    with pytest.raises(ValueError, match="no lrf_dyn"):
        offload(create_model("tiny", "ssa", input_size=(16, 16), embed_dim=16, heads=2), "x")
