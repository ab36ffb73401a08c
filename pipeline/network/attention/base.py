"""The attention interface and its registry.

An attention module maps spike tokens `x_t[B, N, D]` (N tokens in raster order over a token
grid `(Gh, Gw)`) to `[B, N, D]`, including its own Q/K/V projections and the output projection
`BN(W_o .)`; the block adds the residual. Its state is its own dict of tensors, owned by the
caller; `forward(x[T, B, N, D])` equals the scan of `step` (spikes exactly, reals to 1e-5).
Mechanisms register under a key (`register_attention`) and are built by `create_attention`;
engines look mechanisms up by that key (e.g. `engines.numba_attention`), never by lists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from spikestream.pipeline.network.state import scan

State = dict[str, Tensor]

ATTENTION: dict[str, type[Attention]] = {}


def register_attention(key: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: make a mechanism available as `create_attention(key, ...)`."""

    def deco(cls: type[Attention]) -> type[Attention]:
        if key in ATTENTION:
            raise ValueError(f"attention key {key!r} registered twice")
        cls.key = key
        ATTENTION[key] = cls
        return cls

    return deco


def create_attention(key: str, dim: int, heads: int, grid: tuple[int, int], **kwargs) -> Attention:
    """Build the mechanism registered under `key`."""
    try:
        cls = ATTENTION[key]
    except KeyError:
        raise ValueError(f"unknown attention {key!r}; known: {sorted(ATTENTION)}") from None
    options = attention_options(key)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"attention {key!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(options) or 'none'}")
    return cls(dim=dim, heads=heads, grid=grid, **kwargs)


def attention_options(key: str) -> dict[str, Any]:
    """The options of mechanism `key` (constructor keywords past dim, heads, grid) with their
    defaults."""
    params = inspect.signature(ATTENTION[key].__init__).parameters
    return {n: p.default for n, p in params.items()
            if n not in ("self", "dim", "heads", "grid") and p.kind is p.POSITIONAL_OR_KEYWORD}


class Attention(nn.Module):
    """Base class: subclasses implement `init_state` and `step`; `forward` scans `step`."""

    key: str = ""
    #: False for mechanisms that cannot run one timestep at a time (they raise in `step`).
    causal: bool = True

    def __init__(self, dim: int, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim = dim
        self.heads = heads
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_tokens = self.grid[0] * self.grid[1]

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return scan(self.step, self.init_state(x.shape[1], device=x.device, dtype=x.dtype), x)

    def split_heads(self, x: Tensor) -> Tensor:
        """`[B, N, D] -> [B, h, N, d]`."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """`[B, h, N, d] -> [B, N, D]`."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def split_seq(self, x: Tensor) -> Tensor:
        """`[T, B, N, D] -> [T, B, h, N, d]`."""
        t, b, n, _ = x.shape
        return x.reshape(t, b, n, self.heads, self.dim // self.heads).transpose(2, 3)

    def merge_seq(self, x: Tensor) -> Tensor:
        """`[T, B, h, N, d] -> [T, B, N, D]`."""
        t, b, h, n, d = x.shape
        return x.transpose(2, 3).reshape(t, b, n, h * d)
