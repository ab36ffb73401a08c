"""`statten`: STAtten's spatio-temporal attention over chunks of c timesteps.

The timesteps are split into consecutive chunks of `chunk` steps (the last one may be shorter);
the `c * N` tokens of a chunk attend to each other, `a_t = s * Q_t (sum_{t' in chunk} K_t'^T
V_t')`, `s = 1 / (N c)`, then `SN_0.5`. Two modes:

- `mode="chunk"` (STAtten, offline): every step of a chunk sees the whole chunk, including
  steps after it, so the mechanism is not causal. `forward(x[T])` computes it; `step` raises a
  `RuntimeError` (a stepped output would need c - 1 future frames). To stream, use the causal
  mode, or collect a chunk of frames and call `forward` on it.
- `mode="causal"` (live use): step t of a chunk attends to the steps of its chunk from the
  chunk's first step up to and including t, never to later ones: the running sum
  `sum_{t0 <= t' <= t} K_t'^T V_t'` is the state (d x d per head, constant size), cleared at
  each chunk boundary. With the same scale, the last step of each chunk gives exactly the
  chunk mode's output for that step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.qkv import SpikingQKV

MODES = ("chunk", "causal")


@register_attention("statten")
class STAtten(SpikingQKV):
    """STAtten with `chunk` timesteps per chunk; see the module docstring for the modes."""

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        chunk: int = 4,
        mode: str = "chunk",
        scale: float | None = None,
    ) -> None:
        super().__init__(dim, heads, grid)
        if mode not in MODES:
            raise ValueError(f"statten mode must be one of {MODES}, got {mode!r}")
        if chunk < 1:
            raise ValueError(f"statten chunk must be >= 1, got {chunk}")
        self.chunk = int(chunk)
        self.mode = mode
        self.causal = mode == "causal"
        self.scale = float(scale) if scale is not None else 1.0 / (self.num_tokens * self.chunk)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        st = super().init_state(batch, device, dtype)
        d = self.dim // self.heads
        st["kv"] = torch.zeros(batch, self.heads, d, d, device=device, dtype=dtype)
        st["pos"] = torch.zeros((), dtype=torch.long, device=device)  # step within the chunk
        return st

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.causal:
            raise RuntimeError(
                f"statten chunk mode is not causal: each output depends on all {self.chunk} "
                "steps of its chunk, including later ones, so it cannot run one step at a time; "
                "build it with mode='causal' for streaming, or call forward() on whole chunks"
            )
        q, k, v, state = self.qkv(x, state)
        fresh = (state["pos"] == 0).to(state["kv"].dtype)
        kv = state["kv"] * (1 - fresh) + k.transpose(-2, -1) @ v
        a = (q @ kv) * self.scale
        y, state = self.fire(self.merge_heads(a), state)
        return y, dict(state, kv=kv, pos=(state["pos"] + 1) % self.chunk)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_seq(x)  # the Q/K/V neurons run causally in both modes
        kv_t = k.transpose(-2, -1) @ v  # [T, B, h, d, d]: each step's K^T V
        kv = []
        for c0 in range(0, x.shape[0], self.chunk):
            c1 = min(c0 + self.chunk, x.shape[0])
            acc = torch.zeros_like(kv_t[0])
            sums = []
            for t in range(c0, c1):
                acc = acc + kv_t[t]
                sums.append(acc)
            # causal: the chunk so far; chunk mode: the whole chunk, for every step of it
            kv.extend(sums if self.causal else [acc] * (c1 - c0))
        a = (q @ torch.stack(kv)) * self.scale
        return self.fire_seq(self.merge_seq(a))

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}, mode={self.mode!r}, scale={self.scale:g}"
