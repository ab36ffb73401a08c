"""Transformer blocks, one class per layout of the residual stream (DESIGN.md, "Block layouts").

- `MSBlock` (membrane shortcut, the Spike-driven Transformer's and STAtten's): `x = x +
  Attn(SN(x))`, `x = x + BN(W_2 SN(BN(W_1 SN(x))))`; every linear layer sees spikes and the
  residual stream is real-valued.
- `SpikformerBlock` (Spikformer's): `x = x + SN(Attn(x))`, `x = x + SN(BN(W_2 SN(BN(W_1 x))))`;
  the attention's output projection and the MLP end in a neuron, so the residual stream
  carries spike counts.

`bias=True` gives the output projection and the MLP's two linears a bias, as the papers' 1x1
convolutions have (the attention module is built without one and its projection replaced).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.attention import create_attention
from spikestream.pipeline.network.layers import TokenProj
from spikestream.pipeline.network.neurons import LIF
from spikestream.pipeline.network.state import State


class _BlockBase(nn.Module):
    def __init__(self, attention: str, dim: int, heads: int, grid: tuple[int, int],
                 mlp_ratio: int, attention_kwargs: dict[str, Any], bias: bool) -> None:
        super().__init__()
        self.attn = create_attention(attention, dim, heads, grid, **attention_kwargs)
        if bias:
            self.attn.proj = TokenProj(dim, dim, bias=True)
        self.fc1 = TokenProj(dim, mlp_ratio * dim, bias=bias)
        self.mlp_lif = LIF()
        self.fc2 = TokenProj(mlp_ratio * dim, dim, bias=bias)
        self.dim = dim
        self.hidden = mlp_ratio * dim
        self.num_tokens = grid[0] * grid[1]

    def _zeros(self, batch: int, width: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.num_tokens, width, device=device, dtype=dtype)


class MSBlock(_BlockBase):
    """`x = x + Attn(SN(x))`, `x = x + BN(W_2 SN(BN(W_1 SN(x))))`."""

    def __init__(self, attention: str, dim: int, heads: int, grid: tuple[int, int],
                 mlp_ratio: int, attention_kwargs: dict[str, Any], bias: bool = False) -> None:
        super().__init__(attention, dim, heads, grid, mlp_ratio, attention_kwargs, bias)
        self.attn_in = LIF()
        self.mlp_in = LIF()

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """`{"attn_in", "attn" (the attention's own state), "mlp_in", "mlp_hidden"}`."""
        return {"attn_in": self._zeros(batch, self.dim, device, dtype),
                "attn": self.attn.init_state(batch, device=device, dtype=dtype),
                "mlp_in": self._zeros(batch, self.dim, device, dtype),
                "mlp_hidden": self._zeros(batch, self.hidden, device, dtype)}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        s, v_attn_in = self.attn_in.step(x, state["attn_in"])
        a, attn = self.attn.step(s, state["attn"])
        x = x + a
        s, v_mlp_in = self.mlp_in.step(x, state["mlp_in"])
        h, v_hidden = self.mlp_lif.step(self.fc1(s), state["mlp_hidden"], consume=True)
        return x + self.fc2(h), {"attn_in": v_attn_in, "attn": attn, "mlp_in": v_mlp_in,
                                 "mlp_hidden": v_hidden}

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_in(x))
        h = self.mlp_lif(self.fc1(self.mlp_in(x)))
        return x + self.fc2(h)


class SpikformerBlock(_BlockBase):
    """`x = x + SN(Attn(x))`, `x = x + SN(BN(W_2 SN(BN(W_1 x))))`."""

    def __init__(self, attention: str, dim: int, heads: int, grid: tuple[int, int],
                 mlp_ratio: int, attention_kwargs: dict[str, Any], bias: bool = True) -> None:
        super().__init__(attention, dim, heads, grid, mlp_ratio, attention_kwargs, bias)
        self.attn_out = LIF()
        self.mlp_out = LIF()

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """`{"attn" (the attention's own state), "attn_out", "mlp_hidden", "mlp_out"}`."""
        return {"attn": self.attn.init_state(batch, device=device, dtype=dtype),
                "attn_out": self._zeros(batch, self.dim, device, dtype),
                "mlp_hidden": self._zeros(batch, self.hidden, device, dtype),
                "mlp_out": self._zeros(batch, self.dim, device, dtype)}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        a, attn = self.attn.step(x, state["attn"])
        s, v_attn_out = self.attn_out.step(a, state["attn_out"], consume=True)
        x = x + s
        h, v_hidden = self.mlp_lif.step(self.fc1(x), state["mlp_hidden"], consume=True)
        s, v_mlp_out = self.mlp_out.step(self.fc2(h), state["mlp_out"], consume=True)
        return x + s, {"attn": attn, "attn_out": v_attn_out, "mlp_hidden": v_hidden,
                       "mlp_out": v_mlp_out}

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn_out(self.attn(x))
        return x + self.mlp_out(self.fc2(self.mlp_lif(self.fc1(x))))


BLOCKS: dict[str, type[_BlockBase]] = {"ms": MSBlock, "spikformer": SpikformerBlock}
