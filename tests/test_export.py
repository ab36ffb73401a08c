"""NIR and ONNX export: the NIR graph read back has the model's nodes, shapes and parameters
(batch norm folded, LIF mapped) and, simulated by NIR's own LIF equation, gives the stem's
spikes; what NIR cannot express is refused; onnxruntime steps equal `model.step`."""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikestream.cli import main
from spikestream.pipeline import create_model
from spikestream.pipeline.export_nir import NIRUnsupported, export_nir, write_nir
from spikestream.pipeline.network.state import flat_state


def avg_stem_model(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("tiny", attention="ssa", input_size=(32, 32), pool="avg",
                     stem_pool=(True, True, False), num_classes=10, **kw)
    for mod in m.modules():  # batch-norm statistics far from identity, so folding matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.3, 2.0)
            mod.weight.data.uniform_(0.5, 2.0)
            mod.bias.data.uniform_(-0.3, 0.6)
            assert mod.running_mean.shape == (c,)
    return m.eval()


def simulate_nir(graph: nir.NIRGraph, frames: list[np.ndarray]) -> list[np.ndarray]:
    """A small NIR interpreter: nodes in edge order, inputs of a node summed, LIF by NIR's
    equation `tau dv/dt = v_leak - v + r I` stepped by Euler with the graph's dt."""
    dt = float(graph.metadata["dt"])
    preds: dict[str, list[str]] = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
    order: list[str] = []
    def visit(n: str) -> None:
        if n in order:
            return
        for p in preds.get(n, []):
            visit(p)
        order.append(n)
    visit("output")
    v: dict[str, np.ndarray] = {}
    outs = []
    for frame in frames:
        val: dict[str, np.ndarray] = {"input": frame}
        for name in order[1:]:
            x = sum(val[p] for p in preds[name])
            node = graph.nodes[name]
            if isinstance(node, nir.Conv2d):
                y = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(node.weight),
                             torch.from_numpy(node.bias), stride=tuple(node.stride),
                             padding=tuple(node.padding))[0].numpy()
            elif isinstance(node, nir.LIF):
                m = v.get(name, np.zeros_like(x))
                m = m + dt / node.tau * (node.v_leak - m + node.r * x)
                s = (m >= node.v_threshold).astype(np.float64)
                v[name] = np.where(s > 0, node.v_reset, m)
                y = s
            elif isinstance(node, nir.AvgPool2d):
                k = tuple(int(i) for i in node.kernel_size)
                y = F.avg_pool2d(torch.from_numpy(x)[None], k, tuple(node.stride))[0].numpy()
            else:
                y = x
            val[name] = y
        outs.append(val["output"])
    return outs


def test_nir_graph_read_back_matches_the_model(tmp_path: Path) -> None:
    m = avg_stem_model()
    path = tmp_path / "stem.nir"
    write_nir(m, path, dt=0.01)
    g = nir.read(path)
    names = {"input", "output", "rpe.conv", "rpe.lif"} | {
        f"stem.{i}.{k}" for i in range(3) for k in ("conv", "lif")} | {"stem.0.pool",
                                                                         "stem.1.pool"}
    assert set(g.nodes) == names
    assert ("stem.2.lif", "output") in g.edges and ("rpe.lif", "output") in g.edges
    assert list(g.nodes["input"].input_type["input"]) == [2, 32, 32]
    assert list(g.nodes["output"].output_type["output"]) == [64, 8, 8]
    for i, (stage, (c, h, w)) in enumerate(zip(m.sps.stages, m.sps.stage_shapes, strict=True)):
        conv, lif = g.nodes[f"stem.{i}.conv"], g.nodes[f"stem.{i}.lif"]
        bn = stage.bn
        gain = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        np.testing.assert_allclose(
            conv.weight, (stage.conv.weight.detach().double() * gain[:, None, None, None]),
            rtol=1e-12)
        np.testing.assert_allclose(
            conv.bias, (bn.bias.detach().double() - bn.running_mean.double() * gain), rtol=1e-12)
        assert conv.weight.shape == tuple(stage.conv.weight.shape)
        assert lif.tau.shape == (c, h, w)
        np.testing.assert_allclose(lif.tau, 2.0 * 0.01)  # tau (steps) x dt
        assert np.all(lif.r == 1) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
        assert stage.lif.v_th == 1.0 and np.all(lif.v_threshold == stage.lif.v_th)
    assert float(g.metadata["dt"]) == 0.01


def test_nir_simulation_gives_the_stem_spikes() -> None:
    m = avg_stem_model(1).double()
    g = export_nir(m, dt=0.005)
    rng = np.random.default_rng(0)
    frames = [rng.poisson(0.6, (2, 32, 32)).astype(np.float64) for _ in range(8)]
    got = simulate_nir(g, frames)
    state = m.sps.init_state(1, dtype=torch.float64)
    fired = 0
    for frame, out in zip(frames, got, strict=True):
        with torch.no_grad():
            tokens, state = m.sps.step(torch.from_numpy(frame)[None], state)
        want = tokens[0].transpose(0, 1).reshape(out.shape).numpy()  # [N, D] -> [D, Gh, Gw]
        np.testing.assert_array_equal(out, want)
        fired += int(want.sum())
    assert fired > 0


def test_nir_refuses_what_it_cannot_express(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NIRUnsupported, match="no product"):
        export_nir(avg_stem_model(), part="model")
    maxpool = create_model("tiny", attention="sdsa", input_size=(32, 32),
                           stem_pool=(True, True, False), num_classes=10)
    with pytest.raises(NIRUnsupported, match="max pooling"):
        export_nir(maxpool)
    ms = create_model("tiny", attention="sdsa", input_size=(32, 32), layout="ms",
                      stem_pool=(False, False, False), num_classes=10)
    with pytest.raises(NIRUnsupported, match="MS-SPS"):
        export_nir(ms)
    out = tmp_path / "n.nir"
    assert main(["export", "nmnist", str(out)]) == 2  # the shipped stem max-pools
    assert "max pooling" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("attention", "layout"), [
    ("ssa", "spikestream"), ("sdsa", "spikestream"), ("sssa", "spikestream"),
    ("ssa", "spikformer"), ("sdsa", "ms")])
def test_onnx_step_equals_model_step(tmp_path: Path, attention: str, layout: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from spikestream.pipeline.export_onnx import export_onnx

    torch.manual_seed(0)
    m = create_model("tiny", attention=attention, input_size=(32, 32), layout=layout,
                     stem_pool=(True, True, False), num_classes=10).eval()
    path = tmp_path / "step.onnx"
    keys = export_onnx(m, path)
    assert not m.training
    sess = ort.InferenceSession(str(path))
    assert [o.name for o in sess.get_outputs()] == ["logits", *[f"new.{k}" for k in keys]]
    state = m.init_state(1)
    feed = {k: v.numpy() for k, v in flat_state(state).items()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = (torch.rand(1, 2, 32, 32, generator=gen) < 0.3).float()
        out = sess.run(None, {"frame": x.numpy(), **feed})
        with torch.no_grad():
            logits, state = m.step(x, state)
        np.testing.assert_allclose(out[0], logits.numpy(), rtol=1e-5, atol=1e-5)
        want = flat_state(state)
        for k, o in zip(keys, out[1:], strict=True):
            np.testing.assert_allclose(o, want[k].numpy(), rtol=1e-5, atol=1e-5)
        feed = dict(zip(keys, out[1:], strict=True))


def test_onnx_refusals_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spikestream.pipeline.export_onnx import export_onnx

    m = create_model("tiny", attention="lrf_dyn", input_size=(32, 32),
                     stem_pool=(True, True, False), num_classes=10)
    with pytest.raises(ValueError, match="diag_embed"):
        export_onnx(m, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    pytest.importorskip("onnx")
    assert main(["export", "nmnist", str(tmp_path / "n.onnx")]) == 0
    assert "11 state tensors" in capsys.readouterr().out
