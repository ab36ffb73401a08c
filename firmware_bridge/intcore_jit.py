"""`JitCore`: the integer core's token loop compiled with numba, for emulators that must keep up
with a fast line.

The numpy `IntCore` stays the specification and the device side's own core (numpy only); this
is the same arithmetic written per channel as firmware would, and tests hold it bit-exact to
`IntCore`. Channels are independent, so each runs its whole token sequence in turn. The kernel
is compiled (or loaded from numba's cache) when this module is imported, never in the middle
of a link exchange.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from spikestream.firmware_bridge.intcore import (
    COUPLING_SHIFT,
    STATE_MAX,
    STATE_MIN,
    CoreParams,
    IntCore,
)


@njit(
    "void(int32[:, :, ::1], int32[:, ::1], int32[:, ::1], int32[:, ::1], int32[:, ::1], "
    "int32[:, ::1], int32[::1], int32[::1], boolean[:, ::1], boolean[:, ::1])",
    cache=True,
    nogil=True,
)
def _tokens(xp, shift, lower, upper, charge, readout, theta, fire_at, u, out):  # pragma: no cover
    heads, kp2, head_dim = xp.shape
    k = kp2 - 2
    nxt = np.empty(k, np.int32)
    for h in range(heads):
        for i in range(head_dim):
            c = h * head_dim + i
            for n in range(u.shape[0]):
                spike = u[n, c]
                for j in range(k):
                    x = xp[h, j + 1, i]
                    v = x - (x >> shift[h, j])
                    v += (lower[h, j] * xp[h, j, i]) >> COUPLING_SHIFT
                    v += (upper[h, j] * xp[h, j + 2, i]) >> COUPLING_SHIFT
                    if spike:
                        v += charge[h, j]
                    nxt[j] = min(max(v, STATE_MIN), STATE_MAX)
                y = 0
                for j in range(k):
                    xp[h, j + 1, i] = nxt[j]
                    y += readout[h, j] * nxt[j]
                fire = y >= fire_at[h]
                out[n, c] = fire
                if fire:
                    xp[h, 1, i] = max(xp[h, 1, i] - theta[h], STATE_MIN)


class JitCore(IntCore):
    """`IntCore` with the token loop in one compiled call; same state, same results."""

    def __init__(self, params: CoreParams) -> None:
        super().__init__(params)
        p, i32 = params, np.int32
        self._args = tuple(
            np.ascontiguousarray(a, dtype=i32)
            for a in (
                p.decay_shift, p.lower, p.upper,
                p.gamma.astype(i32) << p.gamma_shift.astype(i32), p.readout,
            )
        ) + (
            np.ascontiguousarray(p.theta, dtype=i32),
            np.ascontiguousarray(p.readout[:, 0].astype(i32) * p.theta.astype(i32)),
        )

    def _advance(self, u: np.ndarray) -> np.ndarray:
        out = np.empty(u.shape, dtype=bool)
        _tokens(self._xp, *self._args, np.ascontiguousarray(u), out)
        return out
