"""`a2os2a`: A²OS²A, attention from binary Q, real non-negative K and ternary V.

`Q = SN(BN(W_q x))` in {0, 1}, `K = ReLU(BN(W_k x))` real, `V = TernaryLIF(BN(W_v x))` in
{-1, 0, 1}; `a = Q K^T V` with no softmax and no scaling (binary Q selects and ternary V adds
or subtracts K values: additions only), then `SN_0.5`. `reassociate=True` (default) forms
`Q (K^T V)`, O(N d + d^2); `False` forms the N x N matrix `Q K^T` first. The ternary
neuron's charge and threshold are options: `ternary_decay=0.25, ternary_threshold=0.5` is
the first author's public ternary-spike neuron (`H = 0.25 V + X`, fire at |H| >= 0.5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikestream.pipeline.network.attention.base import Attention, State, register_attention
from spikestream.pipeline.network.attention.qkv import ssa_product
from spikestream.pipeline.network.layers import TokenLIF, TokenProj
from spikestream.pipeline.network.neurons import LIF, TernaryLIF


@register_attention("a2os2a")
class A2OS2A(Attention):
    """A²OS²A attention; `reassociate` chooses the order of the two products."""

    def __init__(
        self, dim: int, heads: int, grid: tuple[int, int], reassociate: bool = True,
        ternary_decay: float | None = None, ternary_threshold: float = 1.0,
    ) -> None:
        super().__init__(dim, heads, grid)
        self.reassociate = bool(reassociate)
        self.q = TokenLIF(dim, dim)
        self.k = TokenProj(dim, dim)  # real keys: ReLU(BN(W_k x)), no neuron
        self.v = TokenProj(dim, dim)
        self.v_lif = TernaryLIF(v_th=ternary_threshold, decay=ternary_decay)
        self.attn_lif = LIF(v_th=0.5)
        self.proj = TokenProj(dim, dim)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        shape = (batch, self.num_tokens, self.dim)
        return {n: torch.zeros(shape, device=device, dtype=dtype) for n in ("q", "v", "attn")}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, vq = self.q.step(x, state["q"])
        k = torch.relu(self.k(x))
        v, vv = self.v_lif.step(self.v(x), state["v"])
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        a = self.merge_heads(ssa_product(q, k, v, self.reassociate))
        s, va = self.attn_lif.step(a, state["attn"])
        return self.proj(s), {"q": vq, "v": vv, "attn": va}

    def forward(self, x: Tensor) -> Tensor:
        q = self.split_seq(self.q(x))
        k = self.split_seq(torch.relu(self.k(x)))
        v = self.split_seq(self.v_lif(self.v(x)))
        return self.proj(self.attn_lif(self.merge_seq(ssa_product(q, k, v, self.reassociate))))

    def extra_repr(self) -> str:
        return f"reassociate={self.reassociate}"
