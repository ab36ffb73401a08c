"""`ssa`: Spikformer's spiking self-attention, `SN_0.5(s * (Q K^T) V)` per head, no softmax.

By default the N x N score matrix `Q K^T` is formed explicitly, as Spikformer does and as the
papers' memory figures assume; `reassociate=True` computes `Q (K^T V)` instead (the same
integers, O(N d + d^2) memory). Every timestep is independent apart from the LIF membranes.
"""

from __future__ import annotations

from torch import Tensor

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.qkv import SpikingQKV, ssa_product


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
