"""The parts most mechanisms share: `Q, K, V = SN(BN(W x))`, an attention LIF (v_th 0.5), the
output projection `BN(W_o .)`, and the product `(Q K^T) V`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spikestream.pipeline.network.attention.base import Attention, State
from spikestream.pipeline.network.layers import TokenLIF, TokenProj
from spikestream.pipeline.network.neurons import LIF


def ssa_product(q: Tensor, k: Tensor, v: Tensor, reassociate: bool) -> Tensor:
    """`(Q K^T) V` with the explicit N x N matrix, or `Q (K^T V)` when `reassociate`."""
    if reassociate:
        return q @ (k.transpose(-2, -1) @ v)
    return (q @ k.transpose(-2, -1)) @ v


def token_max_pool(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """3x3 stride-1 max-pool (padding 1) of tokens `[..., N, D]` over the `(Gh, Gw)` token
    grid, each channel on its own: the DVS models' pooling of spike maps."""
    *lead, n, d = x.shape
    img = x.reshape(-1, *grid, d).permute(0, 3, 1, 2)
    out = F.max_pool2d(img, 3, stride=1, padding=1)
    return out.permute(0, 2, 3, 1).reshape(*lead, n, d)


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
        s, va = self.attn_lif.step(a, state["attn"], consume=True)
        return self.proj(s), dict(state, attn=va)

    # Whole-sequence helpers: the projections and norms run over all T x B at once, only the
    # neurons scan over time. In eval mode this equals the scan of `step`.

    def qkv_seq(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Spiking Q, K, V `[T, B, h, N, d]` for a whole sequence `x[T, B, N, D]`."""
        return tuple(self.split_seq(m(x)) for m in (self.q, self.k, self.v))

    def fire_seq(self, a: Tensor) -> Tensor:
        """`BN(W_o SN_0.5(a))` for attention values `a[T, B, N, D]`."""
        return self.proj(self.attn_lif(a))
