"""`model.step` as event-driven numba kernels: the CPU streaming engine for supported models.

`NumbaStep(model)` copies the weights of an eval-mode `SpikingTransformer` into channels-last
arrays and runs one timestep through `engines.numba_kernels`: each conv and linear layer
adds one row of weights per non-zero input (spikes, or event counts in the first layer)
instead of multiplying dense maps, and no torch operation runs inside a step. Besides doing
less work on sparse maps, a step touches a few kilobytes of compiled code rather than the
dispatch paths of some fifty ATen operations, so it stays fast when it runs once per bin
after the thread has idled (the live-stream case; see `benchmarks/streaming.py`).

State is one flat array holding the leaves of the model's nested state (`model.init_state`,
in `torch.utils._pytree` order; stem maps channels-last), and `to_model_state` /
`from_model_state` convert, so a `NumbaStep` and `model.step` can take over from each other
mid-stream. Results agree with `model.step` to float rounding (sums run in another order);
`engines.make_step` checks that over a few steps before it uses one.

Supported: batch 1 on the CPU in float32, LIF neurons, max- or average-pooling stems with any
stem stride, and the attention mechanisms in `SUPPORTED_ATTENTION`. `unsupported(model)`
says why another model cannot run here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from numba.typed import List
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from spikestream.pipeline.engines import numba_kernels as K
from spikestream.pipeline.network.neurons import LIF
from spikestream.pipeline.network.state import State, named_leaves

__all__ = ["SUPPORTED_ATTENTION", "NumbaStep", "unsupported"]

LIFParams = tuple[np.float32, np.float32, np.float32]

#: Attention keys with numba kernels.
SUPPORTED_ATTENTION = ("ssa", "sdsa")


def _f32(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())


def _bn(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Eval batch norm as `y * alpha + shift`, computed in float32 as ATen's CPU kernel does."""
    mean, var = _f32(bn.running_mean), _f32(bn.running_var)
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))
    gamma = _f32(bn.weight) if bn.weight is not None else np.ones_like(mean)
    beta = _f32(bn.bias) if bn.bias is not None else np.zeros_like(mean)
    alpha = (invstd * gamma).astype(np.float32)
    return alpha, (beta - mean * alpha).astype(np.float32)


def _list(arrays: Iterable[np.ndarray]) -> List:
    """Arrays of one type as a numba typed list: its type does not depend on the length, so
    one compiled kernel serves every depth and number of stem stages."""
    out = List()
    for a in arrays:
        out.append(a)
    return out


def _lif(lif: nn.Module) -> LIFParams:
    if not isinstance(lif, LIF):
        raise ValueError(f"numba kernels run LIF neurons only, got {type(lif).__name__}")
    beta = float(lif.beta) if torch.is_tensor(lif.beta) else lif.beta
    return np.float32(lif.tau), np.float32(beta), np.float32(lif.threshold)


def unsupported(model: Any) -> str | None:
    """Why `model` cannot run as a `NumbaStep`, or None when it can."""
    from spikestream.pipeline.network.model import SpikingTransformer

    if not isinstance(model, SpikingTransformer):
        return f"{type(model).__name__} is not a SpikingTransformer"
    if model.attention_key not in SUPPORTED_ATTENTION:
        return (f"attention {model.attention_key!r} has no numba kernels "
                f"(supported: {', '.join(SUPPORTED_ATTENTION)})")
    if model.head.weight.device.type != "cpu" or model.head.weight.dtype != torch.float32:
        return "the model is not float32 on the CPU"
    return None


def _pool_code(pool: nn.Module) -> int:
    if isinstance(pool, nn.MaxPool2d):
        return K.POOL_MAX
    if isinstance(pool, nn.AvgPool2d):
        return K.POOL_AVG
    return K.POOL_NONE


class NumbaStep:
    """One timestep of a supported model in numba kernels (module docstring), with the
    engine interface (`init_state`, `step`, `mode`)."""

    mode = "numba"

    def __init__(self, model: nn.Module) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"model cannot run in numba kernels: {reason}")
        model.eval()
        self.model = model
        self.num_classes = model.num_classes
        self.input_size = model.input_size
        self.in_channels = model.in_channels
        self.frame_shape = (1, model.in_channels, *model.input_size)
        stages = [*model.sps.stages, model.sps.rpe]
        # weights as [C_in, K, K, C_out]: a spike adds contiguous rows
        self._stem_w = _list(_f32(st.conv.weight.permute(1, 2, 3, 0)) for st in stages)
        self._stem_bn = _list(np.stack(_bn(st.bn)) for st in stages)
        self._stem_lif = np.array([_lif(st.lif) for st in stages], np.float32)
        self._stem_cfg = np.array([(st.conv.stride[0], _pool_code(st.pool)) for st in stages],
                                  np.int64)
        projs, lifs = [], []
        for b in model.blocks:
            a = b.attn
            projs += [a.q.proj, a.k.proj, a.v.proj, a.proj, b.fc1, b.fc2]
            lifs += [b.attn_in, a.q.lif, a.k.lif, a.v.lif, a.attn_lif, b.mlp_in, b.mlp_lif]
        self._blk_w = _list(_f32(p.linear.weight.t()) for p in projs)  # [D_in, D_out]
        self._blk_bn = _list(np.stack(_bn(p.bn)) for p in projs)
        self._blk_lif = np.array([_lif(n) for n in lifs], np.float32)
        first = model.blocks[0].attn
        self._attn = K.ATTN_SSA if model.attention_key == "ssa" else K.ATTN_SDSA
        self._heads = int(first.heads)
        self._scale = np.float32(getattr(first, "scale", 1.0))
        self._dvs_pool = bool(getattr(first, "dvs_pool", False))
        self._head_w, self._head_b = _f32(model.head.weight), _f32(model.head.bias)

        # the model's state leaves in pytree order; stem maps [1, C, H, W] kept as [H * W, C]
        # (channels-last), every other leaf as [rows, last axis]
        zeros = model.init_state(1)
        self._spec = pytree.tree_structure(zeros)
        leaves = list(named_leaves(zeros))
        self._shapes = [tuple(t.shape) for _, t in leaves]
        self._maps = [name.startswith("stem.") and t.dim() == 4 for name, t in leaves]
        self._rows = [(sh[2] * sh[3], sh[1]) if m else (int(np.prod(sh[:-1])), sh[-1])
                      for sh, m in zip(self._shapes, self._maps, strict=True)]
        sizes = [r * c for r, c in self._rows]
        self._offsets = np.cumsum([0, *sizes])
        self._layout = np.array([(o, r, c) for o, (r, c) in zip(self._offsets[:-1], self._rows,
                                                                   strict=True)], np.int64)

    def init_state(self, batch: int = 1) -> np.ndarray:
        """Zero membranes: one flat float32 array (`to_model_state` names its parts)."""
        if batch != 1:
            raise ValueError(f"the numba step runs one stream (batch 1), got batch {batch}")
        return np.zeros(int(self._offsets[-1]), np.float32)

    def to_model_state(self, state: np.ndarray) -> State:
        """The flat state as `model.step`'s nested state of tensors (copies)."""
        leaves = []
        for sh, is_map, a, b in zip(self._shapes, self._maps, self._offsets[:-1],
                                    self._offsets[1:], strict=True):
            part = state[a:b]
            if is_map:  # [H, W, C] -> [1, C, H, W]
                part = part.reshape(sh[2], sh[3], sh[1]).transpose(2, 0, 1)
            leaves.append(torch.from_numpy(np.ascontiguousarray(part).reshape(sh)))
        return pytree.tree_unflatten(leaves, self._spec)

    def from_model_state(self, state: State) -> np.ndarray:
        """A state of `model.init_state`'s layout as this step's flat state."""
        leaves, spec = pytree.tree_flatten(state)
        if spec != self._spec:
            raise ValueError("state does not have the layout of model.init_state")
        parts = []
        for t, is_map in zip(leaves, self._maps, strict=True):
            t = t.detach().cpu().to(torch.float32)
            parts.append((t.permute(0, 2, 3, 1) if is_map else t).reshape(-1).numpy())
        return np.concatenate(parts)

    def step(self, frame: Tensor, state: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """One timestep: `frame[1, P, H, W]` -> `(logits[1, C], new flat state)`."""
        if frame.shape != self.frame_shape:
            raise ValueError(f"numba step expects frames of shape {self.frame_shape}, "
                             f"got {tuple(frame.shape)}")
        if frame.dtype != torch.float32 or frame.device.type != "cpu":
            frame = frame.to("cpu", torch.float32)
        new = np.empty_like(state)
        logits = np.empty((1, self.num_classes), np.float32)
        K.step_kernel(
            frame.detach().numpy()[0].transpose(1, 2, 0), self._stem_w, self._stem_bn,
            self._stem_lif, self._stem_cfg,
            self._blk_w, self._blk_bn, self._blk_lif, self._attn, self._heads, self._scale,
            self._dvs_pool, self._head_w, self._head_b, self._layout, state, new, logits[0],
        )  # fmt: skip
        return torch.from_numpy(logits), new

    __call__ = step
