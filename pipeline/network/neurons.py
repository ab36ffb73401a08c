"""Spiking neurons with explicit state: LIF (on `snntorch.Leaky`) and the ternary LIF of A²OS²A.

Every neuron follows the stateful-layer contract of DESIGN.md: `init_state`, `step(x, v) ->
(s, v)` and `forward(x[T, ...]) -> s[T, ...]`, where `forward` is the scan of `step`.
"""

from __future__ import annotations

import snntorch
import torch
from torch import Tensor, nn


class SpikeGE(torch.autograd.Function):
    """Heaviside `[x >= 0]` with a sigmoid surrogate gradient (Spikformer's default, alpha = 4).

    snnTorch's surrogates fire on `x > 0`; the LIF of DESIGN.md fires on `H >= v_th`, which
    matters because attention sums are multiples of the scale and hit the threshold exactly.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float = 4.0) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return grad * ctx.alpha * sg * (1 - sg), None


def spike_ge(x: Tensor, alpha: float = 4.0) -> Tensor:
    """`[x >= 0]` as float, with a sigmoid surrogate gradient."""
    return SpikeGE.apply(x, alpha)


class LIF(snntorch.Leaky):
    """The LIF of DESIGN.md: `H = V + (X - V)/tau`, `S = [H >= v_th]`, `V = H (1 - S)`.

    Parameterised as `snntorch.Leaky` (beta = 1 - 1/tau, input scaled by 1/tau, reset to zero,
    no reset delay, firing through `SpikeGE`). snnTorch's own `forward` keeps the membrane on
    the module and does not detach the reset; `step` computes the same update on explicit
    state with the reset detached from the gradient (spikingjelly's `detach_reset`).
    """

    def __init__(self, tau: float = 2.0, v_th: float = 1.0, alpha: float = 4.0) -> None:
        super().__init__(
            beta=1.0 - 1.0 / tau,
            threshold=v_th,
            spike_grad=lambda x: spike_ge(x, alpha),
            reset_mechanism="zero",
            reset_delay=False,
        )
        self.tau = float(tau)
        self.v_th = float(v_th)

    def init_state(self, shape: tuple[int, ...] | torch.Size, device=None, dtype=None) -> Tensor:
        """Membrane potential of zeros for one timestep's input shape."""
        return torch.zeros(shape, device=device, dtype=dtype)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        h = self.beta * v + x / self.tau  # == v + (x - v) / tau
        s = self.spike_grad(h - self.threshold)
        v = h * (1.0 - s.detach())
        return s, v

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """Scan over the leading time axis: `x[T, ...] -> s[T, ...]`."""
        v = self.init_state(x.shape[1:], device=x.device, dtype=x.dtype)
        out = []
        for x_t in x:
            s, v = self.step(x_t, v)
            out.append(s)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_th={self.v_th}"


class TernaryLIF(nn.Module):
    """Ternary LIF of A²OS²A: +1 at `H >= v_th`, -1 at `H <= -v_th`, reset to zero on either."""

    def __init__(self, tau: float = 2.0, v_th: float = 1.0, alpha: float = 4.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.v_th = float(v_th)
        self.alpha = float(alpha)

    def init_state(self, shape: tuple[int, ...] | torch.Size, device=None, dtype=None) -> Tensor:
        return torch.zeros(shape, device=device, dtype=dtype)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        h = v + (x - v) / self.tau
        pos = spike_ge(h - self.v_th, self.alpha)
        neg = spike_ge(-h - self.v_th, self.alpha)
        s = pos - neg
        v = h * (1.0 - (pos + neg).detach())
        return s, v

    def forward(self, x: Tensor) -> Tensor:
        v = self.init_state(x.shape[1:], device=x.device, dtype=x.dtype)
        out = []
        for x_t in x:
            s, v = self.step(x_t, v)
            out.append(s)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_th={self.v_th}"
