"""Run the LRF-Dyn cores of a model on a device: `offload(model, port_or_link) -> model`.

Each `lrf_dyn` layer's core is quantized (`quantize_lrf_dyn`), uploaded over a `Link`, and
replaced by an `OffloadedCore` that sends `u = k ⊙ v` for every timestep and receives the fire
spikes `s`. Everything else of the model stays on the host. The device holds the core's state,
so an offloaded model serves one stream (batch 1) at a time; the state tensor the layer keeps
is the number of timesteps applied, which must advance one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from spikestream.firmware_bridge.intcore import CoreParams
from spikestream.firmware_bridge.link import Link
from spikestream.firmware_bridge.quantize import quantize_lrf_dyn
from spikestream.pipeline.network.attention.lrf_dyn import LRFDyn


class OffloadedCore(nn.Module):
    """An LRF-Dyn core running on a device behind `link`; same interface as the float core."""

    def __init__(self, link: Link, params: CoreParams) -> None:
        super().__init__()
        self.link = link
        self.params = params
        self.heads, self.head_dim, self.k = params.heads, params.head_dim, params.k
        link.load(params)
        self._position = 0

    def init_state(self, batch: int, device=None, dtype=None) -> Tensor:
        """Zero the device state; the returned tensor counts the timesteps applied since."""
        if batch != 1:
            raise ValueError(f"an offloaded core serves one stream at a time, got batch {batch}")
        self.link.reset_state()
        self._position = 0
        return torch.zeros(1, dtype=torch.int64, device=device)

    def step(self, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if u.shape[0] != 1:
            raise ValueError(
                f"an offloaded core serves one stream at a time, got batch {u.shape[0]}"
            )
        if int(state) != self._position:
            raise RuntimeError(
                f"offloaded core state is on the device at timestep {self._position}; "
                f"got a state for timestep {int(state)} (it can only advance, or restart "
                "with init_state)"
            )
        frame = u[0].detach().cpu().numpy() != 0
        (s,) = self.link.step([frame])
        self._position += 1
        out_dtype = u.dtype if u.is_floating_point() else torch.float32
        s_t = torch.from_numpy(np.ascontiguousarray(s)).to(device=u.device, dtype=out_dtype)
        return s_t.unsqueeze(0), state + 1

    def extra_repr(self) -> str:
        return f"port={self.link.port!r}, heads={self.heads}, head_dim={self.head_dim}, k={self.k}"


def offload(
    model: nn.Module,
    port_or_link: str | Link | Sequence[str | Link],
    state_range: float | None = None,
    **link_kwargs,
) -> nn.Module:
    """Swap every `lrf_dyn` core of `model` for one on a device (in place; returns `model`).

    `port_or_link` is a port URL (`/dev/ttyACM0`, a pty path, `socket://HOST:PORT`,
    `spikeemu://...`), an open `Link`, or one of those per `lrf_dyn` layer (one device holds one
    core). `link_kwargs` go to `Link` for ports given as strings.
    """
    layers = [m for m in model.modules() if isinstance(m, LRFDyn)]
    if not layers:
        raise ValueError("model has no lrf_dyn attention layer to offload")
    targets = [port_or_link] if isinstance(port_or_link, (str, Link)) else list(port_or_link)
    if len(targets) != len(layers):
        raise ValueError(
            f"model has {len(layers)} lrf_dyn layers and {len(targets)} device(s) were given; "
            "one device holds one core: pass one port or Link per layer"
        )
    for layer, target in zip(layers, targets, strict=True):
        link = Link(target, **link_kwargs) if isinstance(target, str) else target
        layer.core = OffloadedCore(link, quantize_lrf_dyn(layer, state_range=state_range))
    return model
