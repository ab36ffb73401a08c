"""`lrf_ssa`: SSA with a localized receptive field (the LRF-Dyn paper's first step).

`a = s (1 - lam) (Q K^T) V + lam sum_d DWConv_d(V)`, then `SN_0.5`: the global spiking
attention of `ssa` mixed with depthwise 3x3 convolutions of V over the token grid at
dilations 1, 3 and 5 (`LocalRF`). `lam` is a learned scalar (initial value `lam`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.local import LocalRF
from spikestream.pipeline.network.attention.qkv import SpikingQKV, ssa_product


@register_attention("lrf_ssa")
class LRFSSA(SpikingQKV):
    """SSA plus the multi-scale local branch; `reassociate` as in `ssa`."""

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        scale: float = 0.125,
        lam: float = 0.5,
        dilations: Sequence[int] = (1, 3, 5),
        reassociate: bool = False,
    ) -> None:
        super().__init__(dim, heads, grid)
        self.scale = float(scale)
        self.reassociate = bool(reassociate)
        self.lam = nn.Parameter(torch.tensor(float(lam)))
        self.local = LocalRF(dim, self.grid, dilations)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        q, k, v, state = self.qkv(x, state)
        glob = self.merge_heads(ssa_product(q, k, v, self.reassociate)) * self.scale
        a = (1 - self.lam) * glob + self.lam * self.local(self.merge_heads(v))
        return self.fire(a, state)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_seq(x)
        glob = self.merge_seq(ssa_product(q, k, v, self.reassociate)) * self.scale
        v = self.merge_seq(v)
        return self.fire_seq((1 - self.lam) * glob + self.lam * self.local(v))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, reassociate={self.reassociate}"
