"""`ssa`: Spikformer's spiking self-attention, `SN_0.5(s * (Q K^T) V)` per head, no softmax.

By default the N x N score matrix `Q K^T` is formed explicitly, as Spikformer does and as the
papers' memory figures assume; `reassociate=True` computes `Q (K^T V)` instead (the same
integers, O(N d + d^2) memory). Every timestep is independent apart from the LIF membranes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikestream.pipeline.network.attention.base import (
    Attention,
    State,
    TokenLIF,
    TokenProj,
    lif_step_consuming,
    register_attention,
)
from spikestream.pipeline.network.neurons import LIF


class SpikingQKV(Attention):
    """Shared parts: `Q, K, V = SN(BN(W x))`, an attention LIF (v_th 0.5) and `BN(W_o .)`.

    Mechanisms without the attention LIF pass `attn_lif=False` (and do not call `fire`).
    """

    def __init__(
        self, dim: int, heads: int, grid: tuple[int, int], attn_lif: bool = True
    ) -> None:
        super().__init__(dim, heads, grid)
        self.q = TokenLIF(dim, dim)
        self.k = TokenLIF(dim, dim)
        self.v = TokenLIF(dim, dim)
        if attn_lif:
            self.attn_lif = LIF(v_th=0.5)
        self.proj = TokenProj(dim, dim)

    def _zeros(self, batch: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.num_tokens, self.dim, device=device, dtype=dtype)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        return {n: self._zeros(batch, device, dtype) for n in ("q", "k", "v", "attn")}

    def qkv(self, x: Tensor, state: State) -> tuple[Tensor, Tensor, Tensor, State]:
        """Spiking Q, K, V `[B, h, N, d]` for one timestep and the new membranes."""
        q, vq = self.q.step(x, state["q"])
        k, vk = self.k.step(x, state["k"])
        v, vv = self.v.step(x, state["v"])
        new = dict(state, q=vq, k=vk, v=vv)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v), new

    def fire(self, a: Tensor, state: State) -> tuple[Tensor, State]:
        """`BN(W_o SN_0.5(a))` for attention values `a[B, N, D]`; without autograd `a`'s
        storage is reused for the membrane, so pass a temporary that is not used afterwards."""
        s, va = lif_step_consuming(self.attn_lif, a, state["attn"])
        return self.proj(s), dict(state, attn=va)

    # Whole-sequence helpers: the projections and norms run over all T x B at once, only the
    # neurons scan over time. In eval mode this equals the scan of `step`.

    def split_seq(self, x: Tensor) -> Tensor:
        """`[T, B, N, D] -> [T, B, h, N, d]`."""
        t, b, n, _ = x.shape
        return x.reshape(t, b, n, self.heads, self.dim // self.heads).transpose(2, 3)

    def merge_seq(self, x: Tensor) -> Tensor:
        """`[T, B, h, N, d] -> [T, B, N, D]`."""
        t, b, h, n, d = x.shape
        return x.transpose(2, 3).reshape(t, b, n, h * d)

    def qkv_seq(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Spiking Q, K, V `[T, B, h, N, d]` for a whole sequence `x[T, B, N, D]`."""
        return tuple(self.split_seq(m.lif(m.proj(x))) for m in (self.q, self.k, self.v))

    def fire_seq(self, a: Tensor) -> Tensor:
        """`BN(W_o SN_0.5(a))` for attention values `a[T, B, N, D]`."""
        return self.proj(self.attn_lif(a))


def ssa_product(q: Tensor, k: Tensor, v: Tensor, reassociate: bool) -> Tensor:
    """`(Q K^T) V` with the explicit N x N matrix, or `Q (K^T V)` when `reassociate`."""
    if reassociate:
        return q @ (k.transpose(-2, -1) @ v)
    return (q @ k.transpose(-2, -1)) @ v


@register_attention("ssa")
class SSA(SpikingQKV):
    """Spikformer SSA. `scale` 0.125 (Spikformer), 0.25 in Spikformer's DVS code."""

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        scale: float = 0.125,
        reassociate: bool = False,
    ) -> None:
        super().__init__(dim, heads, grid)
        self.scale = float(scale)
        self.reassociate = bool(reassociate)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, state = self.qkv(x, state)
        a = ssa_product(q, k, v, self.reassociate) * self.scale
        return self.fire(self.merge_heads(a), state)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_seq(x)
        return self.fire_seq(self.merge_seq(ssa_product(q, k, v, self.reassociate) * self.scale))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, reassociate={self.reassociate}"
