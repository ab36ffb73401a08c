"""Host side of the integer core: export a trained `lrf_dyn` layer and run it quantized in torch.

`quantize_lrf_dyn(layer)` maps the float `DendriticCore` to `CoreParams` (docs/arithmetic.md,
"From the float model"); `QuantizedLRFDynCore` computes the integer arithmetic of
`intcore.IntCore` on torch int32 tensors, bit for bit, with a batch axis; `quantize_cores(model)`
injects it into every `lrf_dyn` layer of a model in place of the float core.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from spikestream.firmware_bridge.intcore import (
    COUPLING_SHIFT,
    MAX_DECAY_SHIFT,
    MAX_GAMMA_SHIFT,
    MIN_DECAY_SHIFT,
    STATE_MAX,
    STATE_MIN,
    CoreParams,
)
from spikestream.pipeline.attention.lrf_dyn import DendriticCore, LRFDyn

#: Default state range in units of theta: the float state may reach +-8 theta before saturating.
DEFAULT_HEADROOM = 8.0


def _i8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -128, 127).astype(np.int8)


def quantize_lrf_dyn(
    layer: LRFDyn | DendriticCore,
    state_range: float | None = None,
    n_tokens: int | None = None,
) -> CoreParams:
    """Export the core of a trained `lrf_dyn` layer to the integer form.

    `state_range` is the largest |X| (float units) the int16 state must hold; it fixes the
    state scale `2**e`, the largest power of two with `state_range * 2**e <= 32767` (default
    `8 * theta`). `n_tokens` is needed only when a bare `DendriticCore` is given.
    """
    if isinstance(layer, LRFDyn):
        core, n_tokens = layer.core, layer.num_tokens
    else:
        core = layer
    if not isinstance(core, DendriticCore):
        raise TypeError(f"expected a float DendriticCore to quantize, got {type(core).__name__}")
    if n_tokens is None:
        raise ValueError("n_tokens is required when quantizing a bare DendriticCore")
    with torch.no_grad():
        theta = float(core.theta)
        shifts = torch.round(0.5 + core.max_shift * torch.sigmoid(core.decay_logit))
        lower, upper = (t.double().cpu().numpy() for t in core.couplings())
        gamma = core.gamma.double().cpu().numpy()
        readout = core.readout().double().cpu().numpy()
    rng = DEFAULT_HEADROOM * theta if state_range is None else float(state_range)
    if not rng >= theta > 0:
        raise ValueError(f"state_range {rng} must be >= theta {theta} > 0")
    e = math.floor(math.log2(STATE_MAX / rng))
    scale = 2.0**e
    theta_q = round(theta * scale)
    if not 1 <= theta_q <= STATE_MAX:
        raise ValueError(f"theta {theta} at state scale 2**{e} is outside 1..{STATE_MAX}")
    g = gamma * scale
    need = np.ceil(np.log2(np.maximum(np.abs(g), 1e-30) / 127.0))
    g_shift = np.clip(need, 0, MAX_GAMMA_SHIFT).astype(np.uint8)
    g_q = _i8(g / 2.0 ** g_shift.astype(np.float64))
    c_exp = np.clip(np.floor(np.log2(127.0 / np.abs(readout).max(axis=1))), 0, 6)
    c_q = _i8(readout * (2.0**c_exp)[:, None])
    heads, k = gamma.shape
    return CoreParams(
        heads=heads,
        head_dim=core.head_dim,
        k=k,
        n_tokens=int(n_tokens),
        decay_shift=shifts.clamp(MIN_DECAY_SHIFT, MAX_DECAY_SHIFT).cpu().numpy().astype(np.uint8),
        lower=_i8(lower * 2**COUPLING_SHIFT),
        upper=_i8(upper * 2**COUPLING_SHIFT),
        gamma=g_q,
        gamma_shift=g_shift,
        readout=c_q,
        theta=np.full(heads, theta_q, dtype=np.int16),
    )


class QuantizedLRFDynCore(nn.Module):
    """The integer core on torch int32 tensors: `step(u[B, N, D], X) -> (s[B, N, D], X)`.

    Matches `IntCore` bit for bit for every batch element. The state is int32
    `[B, heads, k, head_dim]` holding int16 values; `init_state` ignores the float `dtype` it
    is handed by the attention layer.
    """

    def __init__(self, params: CoreParams) -> None:
        super().__init__()
        self.params = params
        self.heads, self.head_dim, self.k = params.heads, params.head_dim, params.k

        def buf(name: str, a: np.ndarray) -> None:
            self.register_buffer(name, torch.from_numpy(np.asarray(a, dtype=np.int32)))

        p = params
        buf("shift", p.decay_shift[:, :, None])
        buf("lower", p.lower[:, :, None])
        buf("upper", p.upper[:, :, None])
        buf("charge", p.gamma.astype(np.int32)[:, :, None] << p.gamma_shift[:, :, None])
        buf("readout", p.readout[:, :, None])
        buf("theta", p.theta[:, None, None])
        buf("fire_at", (p.readout[:, :1].astype(np.int32) * p.theta[:, None])[:, :, None])

    def init_state(self, batch: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(
            batch, self.heads, self.k, self.head_dim, dtype=torch.int32, device=device
        )

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One timestep of N tokens; the state must be the int32 tensor of `init_state`."""
        b, n, dim = u.shape
        h, d = self.heads, self.head_dim
        if dim != h * d:
            raise ValueError(f"QuantizedLRFDynCore: {dim} channels, expected {h * d}")
        if x.dtype != torch.int32:
            raise TypeError(f"QuantizedLRFDynCore: int32 state expected, got {x.dtype}")
        out_dtype = u.dtype if u.is_floating_point() else torch.float32
        us = (u != 0).to(torch.int32).reshape(b, n, h, 1, d).unbind(1)
        out = []
        zero = x.new_zeros(b, h, 1, d)
        for u_n in us:
            # X[j-1] and X[j+1] with zeros beyond the ends (L[:, 0] = R[:, k-1] = 0 anyway)
            below = torch.cat([zero, x[:, :, :-1]], dim=2)
            above = torch.cat([x[:, :, 1:], zero], dim=2)
            nxt = (
                x
                - (x >> self.shift)
                + ((self.lower * below) >> COUPLING_SHIFT)
                + ((self.upper * above) >> COUPLING_SHIFT)
                + self.charge * u_n
            ).clamp_(STATE_MIN, STATE_MAX)
            s = (self.readout * nxt).sum(dim=2, keepdim=True) >= self.fire_at  # [B, h, 1, d]
            x = torch.cat(
                [(nxt[:, :, :1] - self.theta * s).clamp_(min=STATE_MIN), nxt[:, :, 1:]], 2
            )
            out.append(s)
        s = torch.stack(out, dim=1).reshape(b, n, dim)
        return s.to(out_dtype), x

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, k={self.k}"


def quantize_cores(model: nn.Module, state_range: float | None = None) -> nn.Module:
    """Replace the core of every `lrf_dyn` layer of `model` by its integer twin (in place)."""
    found = 0
    for mod in model.modules():
        if isinstance(mod, LRFDyn):
            mod.core = QuantizedLRFDynCore(quantize_lrf_dyn(mod, state_range=state_range))
            found += 1
    if not found:
        raise ValueError("model has no lrf_dyn attention layer to quantize")
    return model
