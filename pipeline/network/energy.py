"""Synaptic operations and the energy estimate spiking-transformer papers report.

`count_synops` runs the model's `step` over real frames under a `TorchDispatchMode` that sees
every matrix product and convolution (`aten.mm/addmm/bmm/baddbmm/convolution`), so linear
layers, convolutions and the attention products are all counted from the tensors that
actually flow. An operation is an accumulate (AC) when one operand is a spike tensor (values
in {-1, 0, 1}: binary or ternary), counted as `dense MACs x fraction of non-zero spikes` (only
the spikes that arrive cost an addition); otherwise every multiply-accumulate is counted as a
MAC (e.g. the first convolution on event-count frames, the head on averaged features).
Element-wise masks, norms (foldable into the weights) and neuron updates are not counted,
as in the papers. Energy: 0.9 pJ per AC and 4.6 pJ per MAC (45 nm, Horowitz 2014).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from spikestream.pipeline.network.model import SpikingTransformer

E_AC_PJ = 0.9
E_MAC_PJ = 4.6

_aten = torch.ops.aten


def spike_rate(x: Tensor) -> float | None:
    """Fraction of non-zero entries if `x` holds only -1, 0 and 1, else None."""
    if x.is_floating_point():
        if not bool(((x == 0) | (x == 1) | (x == -1)).all()):
            return None
    return float((x != 0).sum()) / max(1, x.numel())


class SynOpCounter(TorchDispatchMode):
    """Accumulates `ac` and `mac` counts over the products run while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ac = 0.0
        self.mac = 0.0

    def _add(self, dense: int, operands: tuple[Tensor, ...]) -> None:
        rates = [r for r in (spike_rate(t) for t in operands) if r is not None]
        if rates:
            self.ac += dense * min(rates)
        else:
            self.mac += dense

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        packet = func._overloadpacket
        if packet in (_aten.mm, _aten.bmm):
            a, b = args[0], args[1]
            self._add(a.numel() * b.shape[-1], (a, b))
        elif packet in (_aten.addmm, _aten.baddbmm):
            a, b = args[1], args[2]
            self._add(a.numel() * b.shape[-1], (a, b))
        elif packet is _aten.convolution:
            x, w = args[0], args[1]
            # each output element sums C_in/groups x kernel products; only the input can spike
            self._add(out.numel() * math.prod(w.shape[1:]), (x,))
        return out


@dataclass
class EnergyReport:
    """Per-timestep synaptic operations and energy of one model on one input."""

    config: str
    attention: str
    parameters: int
    num_tokens: int
    timesteps: int
    ac_per_step: float
    mac_per_step: float
    energy_uj_per_step: float
    input_description: str

    def as_dict(self) -> dict:
        return asdict(self)


def count_synops(model: SpikingTransformer, frames: Tensor) -> tuple[float, float]:
    """Mean (AC, MAC) per timestep of `model.step` over `frames[T, B, P, H, W]`, per sample.

    Causal models are stepped; models that cannot step (STAtten chunk mode) run `forward`,
    whose products are the same operations batched over time.
    """
    t, b = frames.shape[:2]
    counter = SynOpCounter()
    with torch.no_grad(), counter:
        if model.causal:
            state = model.init_state(b, device=frames.device)
            for frame in frames:
                _, state = model.step(frame, state)
        else:
            model(frames)
    return counter.ac / (t * b), counter.mac / (t * b)


def energy_report(
    model: SpikingTransformer, frames: Tensor, config_name: str, input_description: str
) -> EnergyReport:
    """Parameters, AC and MAC per timestep, and `0.9 pJ * AC + 4.6 pJ * MAC` in microjoules."""
    was_training = model.training
    model.eval()
    try:
        ac, mac = count_synops(model, frames)
    finally:
        model.train(was_training)
    return EnergyReport(
        config=config_name,
        attention=model.attention_key,
        parameters=sum(p.numel() for p in model.parameters()),
        num_tokens=model.num_tokens,
        timesteps=int(frames.shape[0]),
        ac_per_step=ac,
        mac_per_step=mac,
        energy_uj_per_step=(ac * E_AC_PJ + mac * E_MAC_PJ) * 1e-6,
        input_description=input_description,
    )
