"""`sdsa`: the Spike-driven Transformer's self-attention, `Q ⊙ SN_0.5(sum_tokens(K ⊙ V))`.

Masks and additions only, O(N d). The DVS variant (`dvs_pool=True`) max-pools K and V over
the token grid (3x3, stride 1), as the Spike-driven Transformer's DVS models do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.qkv import SpikingQKV, token_max_pool


@register_attention("sdsa")
class SDSA(SpikingQKV):
    """SDSA-V1: per channel, the token sum of `K ⊙ V` fires a LIF that masks Q."""

    def __init__(
        self, dim: int, heads: int, grid: tuple[int, int], dvs_pool: bool = False
    ) -> None:
        super().__init__(dim, heads, grid)
        self.dvs_pool = bool(dvs_pool)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        st = {n: self._zeros(batch, device, dtype) for n in ("q", "k", "v")}
        # the attention LIF (v_th 0.5) fires on the K-V summary, one value per channel
        st["attn"] = torch.zeros(batch, 1, self.dim, device=device, dtype=dtype)
        return st

    def pool(self, x: Tensor) -> Tensor:
        """3x3 stride-1 max-pool of `[..., N, D]` spikes over the token grid."""
        return token_max_pool(x, self.grid)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, vq = self.q.step(x, state["q"])
        k, vk = self.k.step(x, state["k"])
        v, vv = self.v.step(x, state["v"])
        if self.dvs_pool:
            k, v = self.pool(k), self.pool(v)
        kv = (k * v).sum(dim=1, keepdim=True)  # [B, 1, D]: per head and channel
        s, va = self.attn_lif.step(kv, state["attn"])
        y = self.proj(q * s)
        return y, {"q": vq, "k": vk, "v": vv, "attn": va}

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (self.merge_seq(t) for t in self.qkv_seq(x))
        if self.dvs_pool:
            k, v = self.pool(k), self.pool(v)
        s = self.attn_lif((k * v).sum(dim=2, keepdim=True))
        return self.proj(q * s)

    def extra_repr(self) -> str:
        return f"dvs_pool={self.dvs_pool}"
