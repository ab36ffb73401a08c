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

`dvs=True` is STAtten's DVS branch: Q, K, V and the block's input spikes x (the shortcut
spikes) are max-pooled over the token grid (3x3, stride 1), and the attention neuron's spikes
gate the pooled input, `y = SN_0.5(a) * pool(x) + pool(x)`, before the output projection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.qkv import SpikingQKV, token_max_pool

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
        dvs: bool = False,
    ) -> None:
        super().__init__(dim, heads, grid)
        if mode not in MODES:
            raise ValueError(f"statten mode must be one of {MODES}, got {mode!r}")
        if chunk < 1:
            raise ValueError(f"statten chunk must be >= 1, got {chunk}")
        self.chunk = int(chunk)
        self.mode = mode
        self.causal = mode == "causal"
        self.dvs = bool(dvs)
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
        q, vq = self.q.step(x, state["q"])
        k, vk = self.k.step(x, state["k"])
        v, vv = self.v.step(x, state["v"])
        if self.dvs:
            q, k, v = (token_max_pool(t, self.grid) for t in (q, k, v))
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        fresh = (state["pos"] == 0).to(state["kv"].dtype)
        kv = state["kv"] * (1 - fresh) + k.transpose(-2, -1) @ v
        a = self.merge_heads((q @ kv) * self.scale)
        s, va = self.attn_lif.step(a, state["attn"], consume=True)
        y = self.proj(self._gate(s, x))
        return y, {"q": vq, "k": vk, "v": vv, "attn": va, "kv": kv,
                   "pos": (state["pos"] + 1) % self.chunk}

    def _gate(self, s: Tensor, x: Tensor) -> Tensor:
        """The DVS branch's `s * pool(x) + pool(x)`; `s` itself otherwise."""
        if not self.dvs:
            return s
        xp = token_max_pool(x, self.grid)
        return s * xp + xp

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (m(x) for m in (self.q, self.k, self.v))  # neurons causal in both modes
        if self.dvs:
            q, k, v = (token_max_pool(t, self.grid) for t in (q, k, v))
        q, k, v = self.split_seq(q), self.split_seq(k), self.split_seq(v)
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
        return self.proj(self._gate(self.attn_lif(self.merge_seq(a)), x))

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}, mode={self.mode!r}, scale={self.scale:g}, dvs={self.dvs}"
