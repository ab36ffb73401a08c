"""`lrf_dyn`: LRF-Dyn attention, charge-fire-reset dynamics over the token stream (DESIGN.md).

Per head, with spike tokens `Q, K, V = SN(BN(W x))` and tokens n in raster order:

    u_n = k_n ⊙ v_n                      binary, channel-wise
    X_n = A X_{n-1} + Gamma u_n          X: k dendritic compartments per channel (charge)
    y_n = C^T X_n                        soma potential
    s_n = [y_n >= theta]                 fire (`spike_ge`, sigmoid surrogate)
    X_n[0] -= theta * s_n                subtractive reset (detached for the gradient)
    a_n = q_n ⊙ s_n + local_n            local_n = sum_d DWConv_d(V)_n (`LocalRF`)
    out = BN(W_o SN_0.5(a))

Choices of this project (docs/lrf_dyn.md):

- Compartment 0 is the soma and its readout weight is fixed to 1 (`C[0] = 1`), so subtracting
  theta from `X[0]` lowers `y` by exactly theta: the reset is "subtraction of theta on s_n".
- `A` is tridiagonal per head: diagonal decays `a_j = 1 - 2**-S_j`, neighbour couplings
  `A[j, j-1] = lower_j`, `A[j, j+1] = upper_j`, each `0.5 * tanh(raw)` (the int8 range of the
  integer core's `>> 8` products). The decay shift is `S_j = 0.5 + max_shift * sigmoid(rho_j)`,
  rounded to an integer in the forward pass with a straight-through gradient
  (`quantize_decay=True`), so the float model uses exactly the shifts the device uses.
- The state X carries over from token to token and from timestep to timestep: the neuron
  integrates the camera's continuous token stream. State per sample is `[heads, k, d]`.

The core computing `s` from `u` is the attribute `core` (`DendriticCore` by default). Any module
with `init_state(batch, device, dtype) -> Tensor` and `step(u[B, N, D], state) -> (s, state)`
can replace it: the integer core of `spikestream.firmware_bridge` is injected this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.attention.base import State, register_attention
from spikestream.pipeline.network.attention.dendritic_scan import (
    Kernel,
    dendritic_scan,
    scan_kernel,
)
from spikestream.pipeline.network.attention.local import LocalRF
from spikestream.pipeline.network.attention.qkv import SpikingQKV
from spikestream.pipeline.network.neurons import grad_free, spike_ge


def _round_ste(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient."""
    return x + (torch.round(x) - x).detach()


class DendriticCore(nn.Module):
    """The float LRF-Dyn neuron: `u[B, N, D] -> s[B, N, D]` with carried state `X[B, h, k, d]`."""

    def __init__(
        self,
        heads: int,
        head_dim: int,
        k: int = 8,
        theta: float = 1.0,
        max_shift: int = 12,
        quantize_decay: bool = True,
        alpha: float = 4.0,
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if theta <= 0:
            raise ValueError(f"theta must be > 0, got {theta}")
        if not 1 <= max_shift <= 15:  # the integer core shifts int16 values by 1..15
            raise ValueError(f"max_shift must be in 1..15, got {max_shift}")
        self.heads, self.head_dim, self.k = int(heads), int(head_dim), int(k)
        self.max_shift = int(max_shift)
        self.quantize_decay = bool(quantize_decay)
        self.alpha = float(alpha)
        #: `scan` as one compiled loop: True picks the kernel for the tensors' device (numba on
        #: the CPU, Triton on CUDA), "numba" or "triton" names it, False: always `scan_loop`
        self.compiled_scan: bool | Kernel = True
        self.register_buffer("theta", torch.tensor(float(theta)))
        # time constants spread over 2**1 .. 2**8 tokens (1 .. 8 shifts)
        shifts = torch.linspace(1.0, min(8.0, float(self.max_shift)), k) if k > 1 else torch.ones(1)
        frac = (shifts - 0.5) / self.max_shift
        self.decay_logit = nn.Parameter(torch.logit(frac).repeat(heads, 1))
        self.lower_raw = nn.Parameter(torch.zeros(heads, k))
        self.upper_raw = nn.Parameter(torch.zeros(heads, k))
        # full charge on every compartment: one k ⊙ v event fires the soma at once, and runs of
        # events build up in the slow compartments (a running sum of k ⊙ v, as in the causal
        # form of attention that LRF-Dyn approximates)
        self.gamma = nn.Parameter(torch.ones(heads, k))
        self.readout_rest = nn.Parameter(torch.full((heads, k - 1), 1.0 / max(k - 1, 1)))
        # running peak of |X| per head at the end of training timesteps, forgetting 1% per
        # timestep so that early transients fade (sizes the integer core's state scale)
        self.register_buffer("state_peak", torch.zeros(heads))
        end = torch.ones(k)
        end[0] = 0.0
        self.register_buffer("lower_mask", end.clone(), persistent=False)
        self.register_buffer("upper_mask", end.flip(0), persistent=False)

    # --- the parameters as the equations use them -------------------------------------------
    def decay_shift(self) -> Tensor:
        """Decay shifts `S[h, k]` (integers when `quantize_decay`), `a = 1 - 2**-S`."""
        s = 0.5 + self.max_shift * torch.sigmoid(self.decay_logit)
        if self.quantize_decay:
            s = _round_ste(s).clamp(1.0, float(self.max_shift))
        return s

    def decays(self) -> Tensor:
        return 1.0 - torch.pow(2.0, -self.decay_shift())

    def couplings(self) -> tuple[Tensor, Tensor]:
        """`(lower, upper)` `[h, k]`: `A[j, j-1] = lower[j]`, `A[j, j+1] = upper[j]`."""
        return (
            0.5 * torch.tanh(self.lower_raw) * self.lower_mask,
            0.5 * torch.tanh(self.upper_raw) * self.upper_mask,
        )

    def transition(self) -> Tensor:
        """The tridiagonal `A[h, k, k]`."""
        lower, upper = self.couplings()
        a = torch.diag_embed(self.decays())
        if self.k > 1:
            a = a + torch.diag_embed(lower[:, 1:], offset=-1) + torch.diag_embed(upper[:, :-1], 1)
        return a

    def readout(self) -> Tensor:
        """`C[h, k]` with the soma's weight `C[:, 0] = 1`."""
        one = torch.ones(self.heads, 1, dtype=self.readout_rest.dtype, device=self.theta.device)
        return torch.cat([one, self.readout_rest], dim=1)

    # --- the stateful-layer contract ---------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.heads, self.k, self.head_dim, device=device, dtype=dtype)

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One timestep: scan the N tokens of `u[B, N, D]` in order; returns `(s[B, N, D], X)`."""
        s, x, _ = self.scan(u, x)
        return s, x

    def scan(
        self, u: Tensor, x: Tensor, keep_potential: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """`step`, optionally also returning the soma potentials `y[B, N, D]` before firing.

        On the CPU and CUDA (without `keep_potential`) the recurrence runs as one compiled
        loop with its own backward (`dendritic_scan`); elsewhere, and as the reference,
        `scan_loop`."""
        kernel = self._compiled_for(u)
        if keep_potential or kernel is None:
            return self.scan_loop(u, x, keep_potential)
        s, x = self._scan_compiled(u, x, 1, kernel)
        return s, x, None

    def forward_seq(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """All timesteps of `u[T, B, N, D]` from state `x`: `(s[T, B, N, D], X)`, equal to
        stepping through them. The state carries from each timestep's last token to the
        next one's first, so the compiled path scans the T * N tokens in one call."""
        kernel = self._compiled_for(u)
        if kernel is None:
            out = []
            for u_t in u:
                s, x = self.step(u_t, x)
                out.append(s)
            return torch.stack(out), x
        t, b, n, d = u.shape
        s, x = self._scan_compiled(u.transpose(0, 1).reshape(b, t * n, d), x, t, kernel)
        return s.reshape(b, t, n, d).transpose(0, 1), x

    def _compiled_for(self, u: Tensor) -> Kernel | None:
        """The compiled scan's kernel for `u`, None for the loop."""
        if not self.compiled_scan or u.dtype not in (torch.float32, torch.float64):
            return None
        return scan_kernel(u.device) if self.compiled_scan is True else self.compiled_scan

    def _scan_compiled(self, u: Tensor, x: Tensor, steps: int,
                       kernel: Kernel) -> tuple[Tensor, Tensor]:
        """The compiled scan of `u[B, L, D]`, L tokens being `steps` timesteps."""
        b, n, _ = u.shape
        h, k, d = self.heads, self.k, self.head_dim
        theta = float(self.theta)
        us = u.reshape(b, n, h, d).permute(1, 2, 0, 3).reshape(n, h, b * d)
        x = x.permute(1, 2, 0, 3).reshape(h, k, b * d)
        lower, upper = self.couplings()
        s, x, peaks = dendritic_scan(
            us, *(p.to(u.dtype) for p in (self.decays(), lower, upper, self.gamma,
                                          self.readout())),
            x, theta, self.alpha, math.isfinite(theta), steps, kernel,
        )  # fmt: skip
        self._track_peak(peaks)
        return self._tokens(s, b), self._unfold_state(x, b)

    def scan_loop(
        self, u: Tensor, x: Tensor, keep_potential: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """`scan` as a Python loop of batched torch operations, one token at a time."""
        b, n, _ = u.shape
        h, k, d = self.heads, self.k, self.head_dim
        a = self.transition().to(u.dtype)  # [h, k, k]
        gamma = self.gamma.to(u.dtype).unsqueeze(-1)  # [h, k, 1]
        c = self.readout().to(u.dtype).unsqueeze(1)  # [h, 1, k]
        theta = self.theta.to(u.dtype)
        reset = torch.zeros(k, 1, dtype=u.dtype, device=u.device)
        reset[0] = theta  # theta on compartment 0, the soma
        grad = torch.is_grad_enabled()
        resets = bool(torch.isfinite(theta))  # theta = inf: the linear system alone, no spikes
        # the loop runs on [h, k, B*d] so that each token is one batched matmul per head
        x = x.permute(1, 2, 0, 3).reshape(h, k, b * d)
        us = u.reshape(b, n, h, 1, d).permute(1, 2, 3, 0, 4).reshape(n, h, 1, b * d)
        out: list[Tensor] | Tensor = []
        pots = []
        if not grad:  # spikes written straight into one buffer: no list of N tensors to stack
            out = torch.empty(n, h, 1, b * d, dtype=u.dtype, device=u.device)
        for i, u_n in enumerate(us.unbind(0)):
            x = torch.baddbmm(gamma * u_n, a, x)  # charge: A X + Gamma u
            y = torch.bmm(c, x)  # soma potential, [h, 1, B*d]
            if keep_potential:
                pots.append(y)
            y = y - theta
            if grad:
                s = spike_ge(y, self.alpha)  # fire
                out.append(s)
            else:
                s = torch.ge(y, 0, out=out[i])  # fire, as float 0/1 into the buffer
            if resets:
                x = x - reset * s.detach()  # subtractive reset
        spikes = out if isinstance(out, Tensor) else torch.stack(out, dim=0)
        self._track_peak(x.detach().abs().amax(dim=(1, 2))[None])
        return (self._tokens(spikes, b), self._unfold_state(x, b),
                (self._tokens(torch.stack(pots), b) if keep_potential else None))

    def _track_peak(self, peaks: Tensor) -> None:
        """In training, fold each timestep's largest |state| per head (`peaks[T, h]`) into
        the running peak, which forgets 1% per timestep."""
        if self.training:
            with torch.no_grad():
                for peak in peaks.to(self.state_peak.dtype):
                    torch.maximum(self.state_peak * 0.99, peak, out=self.state_peak)

    def _unfold_state(self, x: Tensor, b: int) -> Tensor:
        """`[h, k, B*d] -> [B, h, k, d]`."""
        return x.reshape(self.heads, self.k, b, self.head_dim).permute(2, 0, 1, 3)

    def _tokens(self, t: Tensor, b: int) -> Tensor:
        """Per-token values `[N, h, (1,) B*d]` as `[B, N, D]`."""
        n = t.shape[0]
        t = t.reshape(n, self.heads, b, self.head_dim)
        return t.permute(2, 0, 1, 3).reshape(b, n, self.heads * self.head_dim)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, head_dim={self.head_dim}, k={self.k}, "
            f"theta={float(self.theta)}, quantize_decay={self.quantize_decay}"
        )


@register_attention("lrf_dyn")
class LRFDyn(SpikingQKV):
    """LRF-Dyn attention: `BN(W_o SN_0.5(q ⊙ core(k ⊙ v) + LocalRF(v)))`, O(k D) state."""

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        k: int = 8,
        theta: float = 1.0,
        dilations: Sequence[int] = (1, 3, 5),
        max_shift: int = 12,
        quantize_decay: bool = True,
    ) -> None:
        super().__init__(dim, heads, grid)
        self.core: nn.Module = DendriticCore(
            heads, dim // heads, k=k, theta=theta, max_shift=max_shift,
            quantize_decay=quantize_decay,
        )  # fmt: skip
        self.local = LocalRF(dim, grid, dilations)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        st = super().init_state(batch, device, dtype)
        st["core"] = self.core.init_state(batch, device=device, dtype=dtype)
        return st

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if grad_free():
            return self._step_lean(x, state)
        q, vq = self.q.step(x, state["q"])
        k, vk = self.k.step(x, state["k"])
        v, vv = self.v.step(x, state["v"])
        s, xc = self.core.step(k * v, state["core"])
        a = q * s + self.local(v)
        y, st = self.fire(a, state)
        st.update(q=vq, k=vk, v=vv, core=xc)
        return y, st

    def forward(self, x: Tensor) -> Tensor:
        """Whole sequence `x[T, B, N, D]`: projections, norms and the local field run over all
        T x B at once, the neurons scan over time, and the core scans the T * N tokens
        (`DendriticCore.forward_seq`; an injected core without it is stepped)."""
        q, k, v = (m.lif(m.proj(x)) for m in (self.q, self.k, self.v))
        local = self.local(v)
        u = k * v
        state = self.core.init_state(x.shape[1], device=x.device, dtype=x.dtype)
        if isinstance(self.core, DendriticCore):
            s, _ = self.core.forward_seq(u, state)
        else:
            out = []
            for u_t in u:
                s_t, state = self.core.step(u_t, state)
                out.append(s_t.to(u.dtype))
            s = torch.stack(out)
        return self.fire_seq(q * s + local)

    def _step_lean(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """`step` without autograd, ordered so that temporaries die early: V, its local field,
        K (`k ⊙ v` in K's storage), the core, then Q (`q ⊙ s` in Q's storage), so that
        at most about six `[B, N, D]` tensors live at once. Only tensors this step created
        are overwritten (not the core's or the local convolutions' inputs and outputs). The
        same operations on the same values as `step`, so the results are equal (the local
        sum starts from the first convolution instead of `0 +`: at most the sign of a zero)."""
        sv, vv = self.v.step(x, state["v"])
        gh, gw = self.grid
        img = sv.reshape(-1, gh, gw, self.dim).permute(0, 3, 1, 2)
        convs = iter(self.local.convs)
        local = next(convs)(img)
        for conv in convs:  # == sum(conv(img) for conv in convs), accumulated in place
            local += conv(img)
        sk, vk = self.k.step(x, state["k"])
        u = sk.mul_(sv)  # == k * v (V's spikes, the local field's input, stay intact)
        del sk, sv, img
        s, xc = self.core.step(u, state["core"])
        del u
        sq, vq = self.q.step(x, state["q"])
        a = sq.mul_(s).add_(local.flatten(2).transpose(1, 2).reshape(s.shape))  # q * s + local
        del sq, s, local
        y, st = self.fire(a, state)
        st.update(q=vq, k=vk, v=vv, core=xc)
        return y, st
