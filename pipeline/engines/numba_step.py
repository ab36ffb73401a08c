"""`model.step` as event-driven numba kernels: the CPU streaming engine for supported models.

`NumbaStep(model)` copies the weights of an eval-mode `SpikingTransformer` into channels-last
arrays and runs one timestep as one call of `numba_network.step_kernel` (built from
`numba_kernels` and `numba_attention_kernels`): each conv and linear layer
adds one row of weights per non-zero input (spikes, or event counts in the first layer)
instead of multiplying dense maps, and no torch operation runs inside a step. Besides doing
less work on sparse maps, a step touches a few kilobytes of compiled code rather than the
dispatch paths of some fifty ATen operations, so it stays fast when it runs once per bin
after the thread has idled (the live-stream case; see `benchmarks/streaming.py`).

State is one flat array holding the leaves of the model's nested state (`model.init_state`,
in `torch.utils._pytree` order; stem maps channels-last), and `to_model_state` /
`from_model_state` convert, so a `NumbaStep` and `model.step` can take over from each other
mid-stream. The kernels take their scratch from a workspace the first step sizes
(`numba_kernels.take`), so no later step allocates an array. Results agree with `model.step`
to float rounding (sums run in another order); `engines.make_step` checks that over a few
steps before it uses one.

Supported: batch 1 on the CPU in float32, every block layout (`spikestream`, `spikformer`,
`ms`: biases, head neuron and MS-SPS stem included), LIF neurons, max- or average-pooling stems
with any stem stride, and the attention mechanisms registered in
`numba_attention.NUMBA_ATTENTION` (in the options their checks accept).
`unsupported(model)` says why another model cannot run here.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from spikestream.pipeline.engines import numba_kernels as K
from spikestream.pipeline.engines.numba_attention import (
    NUMBA_ATTENTION,
    f32,
    pack_bn,
    pack_lif,
    pack_proj,
)
from spikestream.pipeline.engines.numba_network import (
    BLOCK_MS,
    BLOCK_SPIKFORMER,
    STEM_MS_SPS,
    STEM_SPS,
    step_kernel,
)
from spikestream.pipeline.network.state import State, named_leaves

__all__ = ["NumbaStep", "allocations_per_step", "unsupported"]


def unsupported(model: Any) -> str | None:
    """Why `model` cannot run as a `NumbaStep`, or None when it can (the attention key must
    have a `NUMBA_ATTENTION` entry whose check passes on every block)."""
    from spikestream.pipeline.network.model import SpikingTransformer

    if not isinstance(model, SpikingTransformer):
        return f"{type(model).__name__} is not a SpikingTransformer"
    entry = NUMBA_ATTENTION.get(model.attention_key)
    if entry is None:
        return (f"attention {model.attention_key!r} has no numba kernels "
                f"(supported: {', '.join(sorted(NUMBA_ATTENTION))})")
    for block in model.blocks:
        reason = entry.check(block.attn)
        if reason is not None:
            return f"attention {model.attention_key!r}: {reason}"
    if model.head.weight.device.type != "cpu" or model.head.weight.dtype != torch.float32:
        return "the model is not float32 on the CPU"
    return None


#: the packed parameters of a layer without a neuron (never read)
NO_NEURON = (1.0, 0.0, 1.0)


def _pool_code(pool: nn.Module | None) -> int:
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
        layout = model.layout
        # the stem's stages, then its position embedding (MS-SPS's has no neuron and no pool)
        stages = [*model.sps.stages, model.sps.rpe]
        # weights as [C_in, K, K, C_out]: a spike adds contiguous rows
        self._stem_w = K.pack_arrays(f32(st.conv.weight.permute(1, 2, 3, 0)) for st in stages)
        self._stem_bn = K.pack_arrays(pack_bn(st.bn) for st in stages)
        self._stem_lif = np.array([pack_lif(st.lif) if hasattr(st, "lif") else NO_NEURON
                                   for st in stages], np.float32)
        self._stem_cfg = np.array([(st.conv.stride[0], _pool_code(getattr(st, "pool", None)))
                                   for st in stages], np.int64)
        self._kinds = np.array([STEM_SPS if layout.stem == "sps" else STEM_MS_SPS,
                                BLOCK_MS if layout.block == "ms" else BLOCK_SPIKFORMER,
                                int(layout.head_lif)], np.int64)
        self._blk_w = K.pack_arrays(a for b in model.blocks for p in (b.fc1, b.fc2)
                                    for a in pack_proj(p))
        neurons = (("attn_in", "mlp_in", "mlp_lif") if layout.block == "ms"
                   else ("attn_out", "mlp_lif", "mlp_out"))
        self._blk_lif = np.array([pack_lif(getattr(b, n)) for b in model.blocks for n in neurons],
                                 np.float32)
        self._head_lif = np.array(pack_lif(model.head_lif) if layout.head_lif else NO_NEURON,
                                  np.float32)
        entry = NUMBA_ATTENTION[model.attention_key]
        packed = [entry.pack(b.attn) for b in model.blocks]
        self._kernel = entry.kernel
        # [D_in, D_out] or [rows, C] each
        self._attn_w = K.pack_arrays(a for p in packed for a in p.arrays)
        self._n_aw = len(packed[0].arrays)
        self._attn_lif = np.array([n for p in packed for n in p.neurons], np.float32)
        self._n_alif = len(packed[0].neurons)
        self._attn_i = np.array([p.ints for p in packed], np.int64)
        self._attn_f = np.array([p.floats for p in packed], np.float32)
        self._n_av = len(list(named_leaves(model.blocks[0].attn.init_state(1))))
        self._head_w, self._head_b = f32(model.head.weight), f32(model.head.bias)

        # the model's state leaves in pytree order; stem maps [1, C, H, W] kept as [H * W, C]
        # (channels-last), every other leaf as [rows, last axis]
        zeros = model.init_state(1)
        self._spec = pytree.tree_structure(zeros)
        leaves = list(named_leaves(zeros))
        self._shapes = [tuple(t.shape) for _, t in leaves]
        self._dtypes = [t.dtype for _, t in leaves]  # held as float32 (e.g. a step counter)
        self._maps = [name.startswith("stem.") and t.dim() == 4 for name, t in leaves]
        self._rows = [(sh[2] * sh[3], sh[1]) if m else (int(np.prod(sh[:-1])), sh[-1])
                      if sh else (1, 1) for sh, m in zip(self._shapes, self._maps, strict=True)]
        sizes = [r * c for r, c in self._rows]
        self._offsets = np.cumsum([0, *sizes])
        self._layout = np.array([(o, r, c) for o, (r, c) in zip(self._offsets[:-1], self._rows,
                                                                   strict=True)], np.int64)
        # output buffers, reused by every step: the flat state twice (a step writes into the
        # one its input state is not), the logits once
        self._states = (self.init_state(1), self.init_state(1))
        self._logits = np.zeros((1, self.num_classes), np.float32)
        self._logits_t = torch.from_numpy(self._logits)
        # the kernels' scratch (`numba_kernels.take`): empty until the first step says how much
        # it needs, then allocated once; steps after that allocate nothing
        self._floats, self._ints, self._cursor = K.workspace()

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of the kernels' workspace: the most a step needs besides its state, input and
        logits (0 before the first step)."""
        return self._floats.nbytes + self._ints.nbytes

    def init_state(self, batch: int = 1) -> np.ndarray:
        """Zero membranes: one flat float32 array (`to_model_state` names its parts)."""
        if batch != 1:
            raise ValueError(f"the numba step runs one stream (batch 1), got batch {batch}")
        return np.zeros(int(self._offsets[-1]), np.float32)

    def to_model_state(self, state: np.ndarray) -> State:
        """The flat state as `model.step`'s nested state of tensors (copies)."""
        leaves = []
        for sh, dtype, is_map, a, b in zip(self._shapes, self._dtypes, self._maps,
                                           self._offsets[:-1], self._offsets[1:], strict=True):
            part = state[a:b]
            if is_map:  # [H, W, C] -> [1, C, H, W]
                part = part.reshape(sh[2], sh[3], sh[1]).transpose(2, 0, 1)
            leaves.append(torch.from_numpy(np.ascontiguousarray(part).reshape(sh)).to(dtype))
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
        """One timestep: `frame[1, P, H, W]` -> `(logits[1, C], new flat state)`.

        After the first step no array is allocated: the kernels' scratch is a workspace sized
        by that step (`scratch_nbytes`). Both outputs are this engine's own buffers: the logits
        are overwritten by the next step; the new state is one of two buffers, the one `state`
        is not, so feeding it back keeps it until the step after next (a step from any other
        array may write into it). Copy what must outlive that."""
        if frame.shape != self.frame_shape:
            raise ValueError(f"numba step expects frames of shape {self.frame_shape}, "
                             f"got {tuple(frame.shape)}")
        if frame.dtype != torch.float32 or frame.device.type != "cpu":
            frame = frame.to("cpu", torch.float32)
        if state.shape != self._states[0].shape or state.dtype != np.float32:
            raise ValueError(f"numba step expects a flat float32 state of shape "
                             f"{self._states[0].shape}, got {state.dtype} {state.shape}")
        new = self._states[1] if np.may_share_memory(state, self._states[0]) else self._states[0]
        step_kernel(*self.kernel_args(frame.detach().numpy()[0].transpose(1, 2, 0), state, new))
        need_floats, need_ints = int(self._cursor[2]), int(self._cursor[3])
        if need_floats > self._floats.size or need_ints > self._ints.size:
            # this step took its scratch from fresh arrays: size the workspace for the next
            self._floats = np.zeros(max(need_floats, self._floats.size), np.float32)
            self._ints = np.zeros(max(need_ints, self._ints.size), np.int64)
        return self._logits_t, new

    def kernel_args(self, frame: np.ndarray, state: np.ndarray, new: np.ndarray) -> tuple:
        """The arguments of `numba_network.step_kernel` for one step from `frame[H, W, P]`:
        `state` is read, `new` written, the logits go to this engine's buffer."""
        return (frame, self._stem_w, self._stem_bn, self._stem_lif, self._stem_cfg,
                self._blk_w, self._blk_lif, self._kernel, self._attn_w, self._n_aw,
                self._attn_lif, self._n_alif, self._attn_i, self._attn_f, self._n_av,
                self._head_w, self._head_b, self._head_lif, self._kinds, self._layout, state,
                new, self._logits[0],
                self._floats, self._ints, self._cursor)

    __call__ = step


@functools.cache
def _step_loop() -> Any:
    """A compiled loop of `count` steps alternating between two argument tuples (compiled on
    first use; every model has the same argument types)."""
    from numba import njit

    @njit
    def steps(count, args, other):  # pragma: no cover - compiled
        for i in range(count):
            step_kernel(*(args if i % 2 == 0 else other))

    return steps


def allocations_per_step(step: NumbaStep, frame: Tensor, steps: int = 6) -> float:
    """What one step allocates, counted by numba's runtime: steps from `frame[1, P, H, W]` run
    in a compiled loop that wraps its arguments once, and (allocations of `steps + 1` steps -
    of 1) / `steps` is a step's own. 0 once the first step has sized the workspace."""
    from numba.core.runtime import _nrt_python, rtsys

    hwc = frame.detach().to("cpu", torch.float32).numpy()[0].transpose(1, 2, 0)
    a, b = step.init_state(1), step.init_state(1)
    args, other = step.kernel_args(hwc, a, b), step.kernel_args(hwc, b, a)
    loop = _step_loop()
    loop(1, args, other)  # compiled before counting
    counts = []
    _nrt_python.memsys_enable_stats()
    try:
        for count in (1, steps + 1):
            before = rtsys.get_allocation_stats().alloc
            loop(count, args, other)
            counts.append(rtsys.get_allocation_stats().alloc - before)
    finally:
        _nrt_python.memsys_disable_stats()
    return (counts[1] - counts[0]) / steps
