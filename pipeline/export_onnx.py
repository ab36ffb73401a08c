"""Export the stepwise model to ONNX: one timestep in, state in and out.

The graph's inputs are `frame [B, P, H, W]` and every state tensor of `model.init_state(B)`,
named by its dotted path in the nested state (`network.state.flat_state`); its outputs are
`logits [B, C]` and the new state, named `new.KEY`, in the same order. A runtime streams by
feeding each step's `new.*` outputs back as the next step's state, starting from zeros (the
graph's metadata `state_keys` lists the keys in order).

The step is traced with autograd on, so it follows `LIF.step`'s plain arithmetic rather than
the in-place inference kernels, which the ONNX exporter cannot express; both compute the same
values (`step` is checked against `forward` elsewhere) and the test compares onnxruntime's
outputs with `model.step`. Refused: mechanisms whose step needs future frames (STAtten's chunk
mode), and `lrf_dyn`, whose dendritic coupling uses `diag_embed`, an operator the exporter
has no ONNX form for.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree

from spikestream.pipeline.network.model import SpikingTransformer
from spikestream.pipeline.network.state import flat_state


class _Step(nn.Module):
    """`model.step` on the state's leaves, in `tree_leaves` order (that of `flat_state`)."""

    def __init__(self, model: SpikingTransformer, spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, frame: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.model.step(frame, pytree.tree_unflatten(list(state), self.spec))
        return (logits, *pytree.tree_leaves(new))


def export_onnx(model: SpikingTransformer, path: str | Path, *, batch: int = 1,
                opset: int = 17) -> list[str]:
    """Write `model.step` as an ONNX graph to `path`; returns the state keys in order."""
    if not model.causal:
        raise ValueError(f"{model.attention_key}: this model's step needs future frames "
                         "(non-causal attention), so there is no stepwise graph to export")
    if model.attention_key == "lrf_dyn":
        raise ValueError("lrf_dyn cannot be exported to ONNX: its dendritic coupling uses "
                         "torch.diag_embed, which has no ONNX form in the exporter")
    import onnx

    was_training = model.training
    model.eval()
    state = model.init_state(batch)
    leaves, spec = pytree.tree_flatten(state)
    keys = list(flat_state(state))
    frame = torch.zeros(batch, model.in_channels, *model.input_size)
    wrapper = _Step(model, spec).eval()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (frame, *[s.clone() for s in leaves]), str(tmp),
                              input_names=["frame", *keys],
                              output_names=["logits", *[f"new.{k}" for k in keys]],
                              dynamo=False, opset_version=opset, verbose=False)
        graph = onnx.load(str(tmp))
        meta = graph.metadata_props.add()
        meta.key, meta.value = "state_keys", ",".join(keys)
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return keys
