"""Token layers shared by the attention mechanisms and the blocks: `BN`, `BN(W x)`, `SN(BN(W x))`.

Tokens are `[..., N, D]`; the linear layers are 1x1 convolutions (a bias only when asked).
Without autograd, batch norm writes into its input's storage (`batch_norm_`) and neurons update in
place (`lif_update`), with values identical to the differentiable path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.neurons import LIF, grad_free


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
    """`BN(W x + b)` on tokens: a 1x1 conv (linear) and batch norm; the linear has a bias only
    when asked (the papers' output projections and MLP convs carry one)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out, bias=bias)
        self.bn = TokenBN(dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return batch_norm_(self.bn, self.linear(x))  # in place without autograd


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
        return self.lif.step(self.proj(x), v, consume=True)

    def forward(self, x: Tensor) -> Tensor:
        """Whole sequence `x[T, B, N, D_in]`: the projection over all T x B, the neuron scanned."""
        return self.lif(self.proj(x))
