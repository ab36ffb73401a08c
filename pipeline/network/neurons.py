"""Spiking neurons with explicit state: LIF (on `snntorch.Leaky`) and the ternary LIF of A²OS²A.

Every neuron follows the stateful-layer contract of DESIGN.md: `init_state`, `step(x, v) ->
(s, v)` and `forward(x[T, ...]) -> s[T, ...]`, where `forward` is the scan of `step`. The LIF
update is written once (`lif_update`): the differentiable form, and the same arithmetic in
place for inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import snntorch
import torch
from torch import Tensor, nn

from spikestream.pipeline.network.state import scan


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


def grad_free() -> bool:
    """True without autograd (`torch.no_grad` / `torch.inference_mode`): inference paths may
    then overwrite temporaries and reuse their storage."""
    return not torch.is_grad_enabled()


# Elements per piece of the in-place update: its small temporaries stay small.
_CHUNK = 1 << 15

_DONATED: ContextVar[bool] = ContextVar("spikestream_donated_state", default=False)


@contextmanager
def donated_state(on: bool = True) -> Iterator[None]:
    """Inside it, grad-free LIF steps write the new membrane into the storage of the old one
    and return that tensor: the caller gives up the state it passes in
    (`SpikingTransformer.step(..., donate=True)`), and a step allocates no new membranes."""
    token = _DONATED.set(on)
    try:
        yield
    finally:
        _DONATED.reset(token)


def state_donated() -> bool:
    """Whether the step running now was given its state to update in place (`donated_state`)."""
    return _DONATED.get()


def lif_update(lif: LIF, x: Tensor, v: Tensor, *, in_place: bool,
               consume: bool = False) -> tuple[Tensor, Tensor]:
    """The LIF update: `H = V + (X - V) / tau`, `S = [H >= v_th]`, `V' = H (1 - S)`.

    Rounded as written, in spikingjelly's order (`v + (x - v) / tau`), so that a model imported
    from the papers' code fires exactly where the original does (`beta V + X / tau` is the
    same number before rounding, but a spike at the threshold can flip).
    `in_place=False`: differentiable, firing through the surrogate and with the reset
    detached. `in_place=True` (no autograd): the same values, computed in the storage of
    `X - V` (of `x` itself when `consume`: pass a fresh temporary nobody else holds), so
    only the spikes are allocated besides. Exactly equal because `h >= v_th` is
    `h - v_th >= 0` in floating point.
    Large tensors form `1 - S` in the spikes' storage and turn it back (`1 - (1 - S) = S`
    exactly for 0 and 1); small ones multiply by `[H < v_th]` (equal to `1 - S`, and a NaN
    membrane stays NaN either way), fewer operations. Comparisons written straight into float
    tensors avoid slow bool conversions."""
    if not in_place:
        h = v + (x - v) / lif.tau
        s = lif.spike_grad(h - lif.threshold)
        return s, h * (1.0 - s.detach())
    h = x.sub_(v) if consume else x - v
    if _DONATED.get() and h.shape == v.shape and v.is_contiguous():
        # the same sum as below (IEEE addition commutes), written into the donated membrane;
        # the spikes then reuse the temporary's storage
        v.add_(h.div_(lif.tau))
        s = torch.ge(v, lif.threshold, out=h)
        if v.numel() <= _CHUNK:
            return s, v.mul_(torch.lt(v, lif.threshold, out=torch.empty_like(v)))
        v.mul_(s.neg_().add_(1.0))
        return s.neg_().add_(1.0), v
    h.div_(lif.tau).add_(v)
    s = torch.ge(h, lif.threshold, out=torch.empty_like(h))
    if h.numel() <= _CHUNK:
        return s, h.mul_(torch.lt(h, lif.threshold, out=torch.empty_like(h)))
    h.mul_(s.neg_().add_(1.0))  # H * (1 - S)
    return s.neg_().add_(1.0), h


class LIF(snntorch.Leaky):
    """The LIF of DESIGN.md: `H = V + (X - V)/tau`, `S = [H >= v_th]`, `V = H (1 - S)`.

    Parameterised as `snntorch.Leaky` (beta = 1 - 1/tau, input scaled by 1/tau, reset to zero,
    no reset delay, firing through `SpikeGE`: the same neuron up to rounding). snnTorch's own
    `forward` keeps the membrane on the module and does not detach the reset; `step` computes
    the same update on explicit state with the reset detached from the gradient
    (spikingjelly's `detach_reset`).
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

    def step(self, x: Tensor, v: Tensor, consume: bool = False) -> tuple[Tensor, Tensor]:
        """`(spikes, new membrane)`; without autograd computed in place (`lif_update`), and
        with `consume` in `x`'s own storage (a temporary the caller no longer needs)."""
        return lif_update(self, x, v, in_place=grad_free(), consume=consume)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """Scan over the leading time axis: `x[T, ...] -> s[T, ...]`."""
        return scan(self.step, self.init_state(x.shape[1:], x.device, x.dtype), x)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_th={self.v_th}"


class TernaryLIF(nn.Module):
    """Ternary LIF of A²OS²A: +1 at `H >= v_th`, -1 at `H <= -v_th`, reset to zero on either.

    The charge is ours by default, `H = V + (X - V)/tau`; with `decay` it is
    `H = decay * V + X` (no input scaling), as in the public ternary-spike code of A²OS²A's
    first author (decay 0.25, v_th 0.5)."""

    def __init__(self, tau: float = 2.0, v_th: float = 1.0, alpha: float = 4.0,
                 decay: float | None = None) -> None:
        super().__init__()
        if v_th <= 0:
            raise ValueError(f"ternary threshold must be > 0, got {v_th}")
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"ternary decay must be in [0, 1), got {decay}")
        self.tau = float(tau)
        self.v_th = float(v_th)
        self.alpha = float(alpha)
        self.decay = None if decay is None else float(decay)

    def init_state(self, shape: tuple[int, ...] | torch.Size, device=None, dtype=None) -> Tensor:
        return torch.zeros(shape, device=device, dtype=dtype)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        h = v + (x - v) / self.tau if self.decay is None else self.decay * v + x
        pos = spike_ge(h - self.v_th, self.alpha)
        neg = spike_ge(-h - self.v_th, self.alpha)
        s = pos - neg
        v = h * (1.0 - (pos + neg).detach())
        return s, v

    def forward(self, x: Tensor) -> Tensor:
        return scan(self.step, self.init_state(x.shape[1:], x.device, x.dtype), x)

    def extra_repr(self) -> str:
        charge = f"tau={self.tau}" if self.decay is None else f"decay={self.decay}"
        return f"{charge}, v_th={self.v_th}"
