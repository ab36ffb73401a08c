"""Host side of the integer core: export a trained `lrf_dyn` layer and run it quantized in torch.

`quantize_lrf_dyn(layer)` maps the float `DendriticCore` to `CoreParams` (docs/arithmetic.md,
"From the float model"); `QuantizedLRFDynCore` computes the integer arithmetic of
`intcore.IntCore` on torch int32 tensors, bit for bit, with a batch axis; `quantize_cores(model)`
injects it into every `lrf_dyn` layer of a model in place of the float core.
"""

from __future__ import annotations

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
from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore, LRFDyn


def _i8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -128, 127).astype(np.int8)


def state_ranges(core: DendriticCore, state_range: float | None = None) -> np.ndarray:
    """Per head, the largest |X| (float units) the int16 state must hold.

    `state_range` if given, else `max(4 * theta, state_peak)` (the running peak of training).
    """
    theta = float(core.theta)
    if state_range is not None:
        rng = np.full(core.heads, float(state_range))
    else:
        peak = core.state_peak.detach().double().cpu().numpy()
        rng = np.maximum(4.0 * theta, peak)
    if not (np.all(np.isfinite(rng)) and np.all(rng >= theta) and theta > 0):
        raise ValueError(f"state range {rng} must be finite and >= theta {theta} > 0")
    return rng


def quantize_lrf_dyn(
    layer: LRFDyn | DendriticCore,
    state_range: float | None = None,
    n_tokens: int | None = None,
) -> CoreParams:
    """Export the core of a trained `lrf_dyn` layer to the integer form.

    Per head, the state scale is `2**e`, the largest power of two with
    `range * 2**e <= 32767`, `range` from `state_ranges` (docs/arithmetic.md, "From the float
    model"). `n_tokens` is needed only when a bare `DendriticCore` is given.
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
    e = np.floor(np.log2(STATE_MAX / state_ranges(core, state_range)))
    scale = 2.0**e  # [heads]
    theta_q = np.rint(theta * scale)
    if np.any(theta_q < 1) or np.any(theta_q > STATE_MAX):
        raise ValueError(f"theta {theta} at state scales {scale} is outside 1..{STATE_MAX}")
    g = gamma * scale[:, None]
    need = np.ceil(np.log2(np.maximum(np.abs(g), 1e-30) / 127.0))
    g_shift = np.clip(need, 0, MAX_GAMMA_SHIFT).astype(np.uint8)
    g_q = _i8(g / 2.0 ** g_shift.astype(np.float64))
    # the soma's weight 1 becomes the integer c_scale exactly; the others keep their ratio to it
    c_scale = np.clip(np.floor(127.0 / np.abs(readout).max(axis=1)), 1, 127)
    c_q = _i8(readout * c_scale[:, None])
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
        theta=theta_q.astype(np.int16),
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
        # state with a zero row at each end: X[j-1] and X[j+1] are plain views of it
        xp = torch.zeros(b, h, self.k + 2, d, dtype=torch.int32, device=x.device)
        xp[:, :, 1:-1] = x
        cur, below, above = xp[:, :, 1:-1], xp[:, :, :-2], xp[:, :, 2:]
        nxt = torch.empty_like(x)
        tmp = torch.empty_like(x)
        for u_n in us:
            torch.bitwise_right_shift(cur, self.shift, out=nxt)
            torch.sub(cur, nxt, out=nxt)  # decay
            torch.mul(self.lower, below, out=tmp)
            nxt.add_(tmp.bitwise_right_shift_(COUPLING_SHIFT))
            torch.mul(self.upper, above, out=tmp)
            nxt.add_(tmp.bitwise_right_shift_(COUPLING_SHIFT))
            nxt.add_(self.charge * u_n).clamp_(STATE_MIN, STATE_MAX)  # charge, saturate
            s = (self.readout * nxt).sum(dim=2, keepdim=True) >= self.fire_at  # [B, h, 1, d]
            nxt[:, :, :1].sub_(self.theta * s).clamp_(min=STATE_MIN)  # subtractive reset
            cur.copy_(nxt)
            out.append(s)
        x = cur.clone()
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
