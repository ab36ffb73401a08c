"""The attention interface, its registry, and the token layers the mechanisms share.

An attention module maps spike tokens `x_t[B, N, D]` (N tokens in raster order over a token
grid `(Gh, Gw)`) to `[B, N, D]`, including its own Q/K/V projections and the output projection
`BN(W_o .)`; the block adds the residual. State is a flat `dict[str, Tensor]` that the caller
owns; `forward(x[T, B, N, D])` equals the scan of `step` (spikes exactly, reals to 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.neurons import LIF

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
    return cls(dim=dim, heads=heads, grid=grid, **kwargs)


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
        state = self.init_state(x.shape[1], device=x.device, dtype=x.dtype)
        out = []
        for x_t in x:
            y, state = self.step(x_t, state)
            out.append(y)
        return torch.stack(out)

    def split_heads(self, x: Tensor) -> Tensor:
        """`[B, N, D] -> [B, h, N, d]`."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """`[B, h, N, d] -> [B, N, D]`."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)


def grad_free() -> bool:
    """True without autograd (`torch.no_grad` / `torch.inference_mode`): the in-place
    inference paths below may then overwrite temporaries and reuse their storage."""
    return not torch.is_grad_enabled()


def batch_norm_(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Eval-mode `bn(x)` written into `x`'s storage (a fresh temporary nobody else holds).

    It calls the same ATen kernel as `bn.forward` with the output aliased to the input (the
    kernel is elementwise), so the values are bit-identical; folding BN into the preceding
    weight would round differently. Falls back to `bn(x)` where that kernel would use batch
    statistics (training mode) or autograd is on, and off the CPU (where `bn` may dispatch
    to another kernel, e.g. cuDNN's)."""
    if (bn.training or bn.running_mean is None or not grad_free() or not x.is_contiguous()
            or x.device.type != "cpu"):
        return bn(x)
    flat = x.view(-1, x.shape[-1]) if isinstance(bn, TokenBN) else x
    torch.ops.aten.native_batch_norm.out(
        flat, bn.weight, bn.bias, bn.running_mean, bn.running_var, False, 0.0, bn.eps,
        out=flat, save_mean=x.new_empty(0), save_invstd=x.new_empty(0),
    )  # fmt: skip
    return x


class TokenBN(nn.BatchNorm1d):
    """BatchNorm over the channel axis of tokens `[..., N, D]`."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class TokenProj(nn.Module):
    """`BN(W x)` on tokens: a 1x1 conv (linear) and batch norm, no bias in the linear."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out, bias=False)
        self.bn = TokenBN(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return batch_norm_(self.bn, self.linear(x))  # in place without autograd


# Elements per piece of `beta * v` in the in-place LIF update: the temporary stays small.
_CHUNK = 1 << 15


def _add_scaled_(h: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """`h += beta * v` with the product rounded on its own, exactly as `beta * v + h` (the
    fused `add_(v, alpha=beta)` rounds once and can differ), a piece at a time on the CPU."""
    n = h.numel()
    if (n <= _CHUNK or h.device.type != "cpu" or h.shape != v.shape
            or not (h.is_contiguous() and v.is_contiguous())):
        return h.add_(beta * v)
    hf, vf = h.view(-1), v.view(-1)
    for i in range(0, n, _CHUNK):
        hf[i : i + _CHUNK].add_(vf[i : i + _CHUNK] * beta)
    return h


def lif_fire_(lif: LIF, h: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Without autograd: the LIF update on `h = x / tau` (a fresh temporary), in its storage.

    Returns `(s, v_new)`: float spikes `[H >= v_th]` and the new membrane `H (1 - S)` in
    `h`'s storage. Large tensors form `1 - S` in the spikes' storage and turn it back
    (`1 - (1 - S) = S` exactly for 0 and 1), so only the spikes are allocated; small ones
    use `[H < v_th]` (equal to `1 - S`, and a NaN membrane stays NaN either way) in a second
    buffer, which takes fewer operations. The values are exactly those of `LIF.step`
    (`h >= v_th` is `h - v_th >= 0` in floating point); comparisons written straight into
    float tensors avoid slow bool conversions."""
    _add_scaled_(h, v, lif.beta)  # == beta * v + x / tau
    s = torch.ge(h, lif.threshold, out=torch.empty_like(h))
    if h.numel() <= _CHUNK:  # small: fewer operations, `[H < v_th]` is `1 - S` (NaN: H * 0)
        return s, h.mul_(torch.lt(h, lif.threshold, out=torch.empty_like(h)))
    h.mul_(s.neg_().add_(1.0))  # H * (1 - S)
    return s.neg_().add_(1.0), h


def lif_step_consuming(lif: LIF, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """`lif.step(x, v)` that may overwrite `x`, a fresh temporary nobody else holds.

    Without autograd (inference) the membrane is computed in `x`'s storage, so one step of a
    layer allocates only the spikes; the values are exactly those of `LIF.step` (see
    `lif_fire_`). With autograd on it is `lif.step(x, v)`.
    """
    if torch.is_grad_enabled() and (x.requires_grad or v.requires_grad):
        return lif.step(x, v)
    return lif_fire_(lif, x.div_(lif.tau), v)


def lif_step_lean(lif: LIF, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """`lif.step(x, v)` leaving `x` untouched; without autograd it allocates only the new
    membrane and the spikes (and skips the surrogate-gradient function)."""
    if not grad_free():
        return lif.step(x, v)
    return lif_fire_(lif, x / lif.tau, v)


class TokenLIF(nn.Module):
    """`SN(BN(W x))` on tokens with explicit membrane state `[B, N, D_out]`."""

    def __init__(self, dim_in: int, dim_out: int, v_th: float = 1.0) -> None:
        super().__init__()
        self.proj = TokenProj(dim_in, dim_out)
        self.lif = LIF(v_th=v_th)
        self.dim_out = dim_out

    def init_state(self, batch: int, num_tokens: int, device=None, dtype=None) -> Tensor:
        return self.lif.init_state((batch, num_tokens, self.dim_out), device=device, dtype=dtype)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return lif_step_consuming(self.lif, self.proj(x), v)
