"""Export to NIR (the Neuromorphic Intermediate Representation, PyPI `nir`).

What NIR can express: linear maps (`Conv2d`, `Affine`, `Linear`, `Scale`), sum and average
pooling, and neurons (`LIF`, `CubaLIF`, `IF`, ...), wired by edges whose signals add up where
they meet. What it cannot: a product of two signals, which every attention mechanism here
computes (`Q K^T V` in ssa/lrf_ssa/statten/a2os2a, `Q ⊙ SN(...)` in sdsa, the salience gate
`S ⊙ V` in sssa, `q ⊙ s` in lrf_dyn), and max pooling. So the whole model is refused with a
clear error, and the part NIR can hold is exported: the spiking patch-splitting stem (conv-BN-LIF
stages with average pooling, and the relative position embedding), which turns event frames
into the token spikes the blocks consume. A max-pooling stem is refused too.

The LIF mapping. Ours, per timestep: `H = V + (X - V) / tau`, spike `S = [H >= v_th]`, hard
reset `V = H (1 - S)`. NIR's LIF is `tau dv/dt = (v_leak - v) + r I`, spiking at `v_threshold`
and resetting to `v_reset`. Its forward-Euler step of length `dt` is
`v + (dt / tau_nir) (v_leak - v + r I)`, which is ours exactly for
`tau_nir = tau * dt`, `r = 1`, `v_leak = 0`, `v_threshold = v_th`, `v_reset = 0`, with `I = X`
the output of the conv node (batch norm folded in: `W' = W g / sqrt(var + eps)`,
`b' = beta - mean g / sqrt(var + eps)`). `dt` is the length of one timestep (the checkpoint's
bin length in seconds when it was trained on time windows; else 1 ms, written in the graph's
metadata). Note that we fire on `>=`; a simulator that fires on `>` differs only where a
membrane equals the threshold exactly. A `CubaLIF` with `tau_syn = dt` reduces to the same
neuron under Euler; we write the plain `LIF`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import nn

from spikestream.pipeline.network.model import SpikingTransformer, StemStage

PARTS = ("stem", "model")


class NIRUnsupported(ValueError):
    """The model (or the part asked for) uses something NIR cannot express."""


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of the conv with eval-mode batch norm folded in (float64)."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.detach().double() * scale[:, None, None, None]
    b = bn.bias.detach().double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        b = b + conv.bias.detach().double() * scale
    return w.numpy(), b.numpy()


def lif_node(stage: StemStage, shape: tuple[int, ...], dt: float) -> nir.LIF:
    """Our LIF as NIR's (see the module doc for the mapping)."""
    full = lambda v: np.full(shape, float(v))  # noqa: E731
    return nir.LIF(tau=full(stage.lif.tau * dt), r=full(1.0), v_leak=full(0.0),
                   v_threshold=full(stage.lif.v_th), v_reset=full(0.0))


def check_expressible(model: SpikingTransformer, part: str) -> None:
    """Raise `NIRUnsupported` naming what NIR cannot hold in `part` of `model`."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; use one of {PARTS}")
    if part == "model":
        raise NIRUnsupported(
            f"NIR cannot express the {len(model.blocks)} attention block(s) "
            f"({model.attention_key}): NIR has linear maps, pooling and neurons but no product "
            "of two signals, which every attention mechanism computes (Q K^T V, Q * SN(...), "
            "q * s); export the stem instead (--part stem)")
    if model.layout.stem != "sps":
        raise NIRUnsupported(
            f"the {model.config['layout']!r} layout's MS-SPS stem max-pools real values before "
            "its last neuron and NIR has no max pooling; only the SPS stem can be exported")
    for i, stage in enumerate(model.sps.stages):
        if isinstance(stage.pool, nn.MaxPool2d):
            raise NIRUnsupported(
                f"stem stage {i} max-pools and NIR has no max pooling; "
                "a stem built with pool='avg' can be exported")


def export_nir(model: SpikingTransformer, *, part: str = "stem", dt: float = 1e-3) -> nir.NIRGraph:
    """The NIR graph of `part` of `model` (only `stem` is expressible; see the module doc).

    Nodes: `input` `[P, H, W]`; per stem stage `stem.{i}.conv` (BN folded), `stem.{i}.lif`,
    and `stem.{i}.pool` (AvgPool2d) where it halves; `rpe.conv`, `rpe.lif`; `output`
    `[D, Gh, Gw]`, fed by the last stage and the RPE (summed: the token spikes `x + SN(...)`).
    """
    check_expressible(model, part)
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    model = model.eval()
    h, w = model.input_size
    nodes: dict[str, Any] = {
        "input": nir.Input(input_type={"input": np.array([model.in_channels, h, w])})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    stages = [(f"stem.{i}", s) for i, s in enumerate(model.sps.stages)]
    for name, stage in [*stages, ("rpe", model.sps.rpe)]:
        conv = stage.conv
        weight, bias = fold_batch_norm(conv, stage.bn)
        in_hw = (h, w)
        h = (h + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        w = (w + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        nodes[f"{name}.conv"] = nir.Conv2d(
            input_shape=in_hw, weight=weight, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=bias)
        nodes[f"{name}.lif"] = lif_node(stage, (conv.out_channels, h, w), dt)
        edges += [(prev, f"{name}.conv"), (f"{name}.conv", f"{name}.lif")]
        last = f"{name}.lif"
        if isinstance(stage.pool, nn.AvgPool2d):
            nodes[f"{name}.pool"] = nir.AvgPool2d(kernel_size=np.array([2, 2]),
                                                  stride=np.array([2, 2]),
                                                  padding=np.array([0, 0]))
            edges.append((last, f"{name}.pool"))
            last = f"{name}.pool"
            h, w = h // 2, w // 2
        if name == "rpe":
            edges += [(prev, "output"), (last, "output")]  # tokens = x + SN(BN(conv x))
        prev = last
    nodes["output"] = nir.Output(output_type={"output": np.array([model.sps.embed_dim, h, w])})
    graph = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False,
                         metadata={"source": "spikestream", "part": part, "dt": dt,
                                   "lif": "H = V + (X - V)/tau; S = [H >= v_th]; V = H(1 - S)",
                                   "attention": model.attention_key})
    return graph


def write_nir(model: SpikingTransformer, path: str | Path, *, part: str = "stem",
              dt: float = 1e-3) -> nir.NIRGraph:
    """Export and write to `path` (temporary file, then renamed)."""
    graph = export_nir(model, part=part, dt=dt)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        nir.write(tmp, graph)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return graph
