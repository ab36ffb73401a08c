"""`lrf_dyn`: the token recurrence against independent re-implementations of its equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikestream.pipeline.network.attention import create_attention
from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore, LRFDyn


def randomize(core: DendriticCore, seed: int) -> None:
    """Random parameters, couplings included, so no term of the equations is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (core.lower_raw, core.upper_raw, core.decay_logit):
            p.copy_(torch.randn(p.shape, generator=g))
        core.gamma.copy_(torch.rand(core.gamma.shape, generator=g) * 0.8 + 0.1)
        core.readout_rest.copy_(torch.randn(core.readout_rest.shape, generator=g) * 0.5)


def lively(att: LRFDyn) -> None:
    """Q, K and V fire often, so that u = k ⊙ v reaches the core (default init fires ~2%)."""
    with torch.no_grad():
        for proj in (att.q, att.k, att.v):
            proj.proj.bn.weight.fill_(4.0)


def numpy_params(core: DendriticCore) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A [h,k,k], Gamma [h,k], C [h,k] and theta rebuilt from the raw parameters, per the docs."""
    rho = core.decay_logit.detach().double().numpy()
    shift = 0.5 + core.max_shift * (1.0 / (1.0 + np.exp(-rho)))
    if core.quantize_decay:
        shift = np.clip(np.round(shift), 1, core.max_shift)
    lower = 0.5 * np.tanh(core.lower_raw.detach().double().numpy())
    upper = 0.5 * np.tanh(core.upper_raw.detach().double().numpy())
    h, k = rho.shape
    a = np.zeros((h, k, k))
    for i in range(h):
        for j in range(k):
            a[i, j, j] = 1.0 - 2.0 ** -shift[i, j]
            if j > 0:
                a[i, j, j - 1] = lower[i, j]
            if j < k - 1:
                a[i, j, j + 1] = upper[i, j]
    c = np.concatenate([np.ones((h, 1)), core.readout_rest.detach().double().numpy()], axis=1)
    return a, core.gamma.detach().double().numpy(), c, float(core.theta)


def numpy_scan(core: DendriticCore, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain loops over b, head, channel and token: spikes and soma potentials `[B, T*N, D]`."""
    a, gamma, c, theta = numpy_params(core)
    h, k = gamma.shape
    d = core.head_dim
    b, n, _ = u.shape
    s = np.zeros(u.shape)
    y = np.zeros(u.shape)
    for bi in range(b):
        for hi in range(h):
            for ci in range(d):
                x = np.zeros(k)
                ch = hi * d + ci
                for t in range(n):
                    x = a[hi] @ x + gamma[hi] * u[bi, t, ch]
                    y[bi, t, ch] = c[hi] @ x
                    if y[bi, t, ch] >= theta:
                        s[bi, t, ch] = 1.0
                        x[0] -= theta
    return s, y


def test_registered() -> None:
    att = create_attention("lrf_dyn", dim=16, heads=2, grid=(2, 3), k=4)
    assert isinstance(att, LRFDyn) and att.core.k == 4


@pytest.mark.parametrize("grid", [(2, 3), (4, 4)])
def test_recurrence_matches_numpy(grid: tuple[int, int]) -> None:
    """Core over 3 timesteps (state carried) equals the plain-python equations, in float64."""
    n = grid[0] * grid[1]
    core = DendriticCore(heads=2, head_dim=3, k=4, theta=1.0).double()
    randomize(core, seed=n)
    g = torch.Generator().manual_seed(1)
    u = (torch.rand(2, 3 * n, 6, generator=g, dtype=torch.float64) < 0.4).double()
    x = core.init_state(2, dtype=torch.float64)
    outs, pots = [], []
    with torch.no_grad():
        for t in range(3):
            s, x, y = core.scan(u[:, t * n : (t + 1) * n], x, keep_potential=True)
            outs.append(s)
            pots.append(y)
    s_ref, y_ref = numpy_scan(core, u.numpy())
    assert s_ref.sum() > 0 and s_ref.sum() < s_ref.size  # both branches exercised
    np.testing.assert_array_equal(torch.cat(outs, 1).numpy(), s_ref)
    np.testing.assert_allclose(torch.cat(pots, 1).numpy(), y_ref, rtol=1e-12, atol=1e-12)


def test_linear_part_closed_form() -> None:
    """theta = +inf: y_n = sum_m C^T A^m Gamma u_{n-m}, across two timesteps of the stream."""
    core = DendriticCore(heads=3, head_dim=2, k=5, theta=1.0).double()
    randomize(core, seed=7)
    core.theta.fill_(float("inf"))
    n = 12
    u = (torch.rand(1, 2 * n, 6, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    x = core.init_state(1, dtype=torch.float64)
    with torch.no_grad():
        s1, x, y1 = core.scan(u[:, :n], x, keep_potential=True)
        s2, x, y2 = core.scan(u[:, n:], x, keep_potential=True)
    assert s1.sum() == 0 and s2.sum() == 0
    y = torch.cat([y1, y2], 1)[0].numpy()  # [2n, D]
    a, gamma, c, _ = numpy_params(core)
    un = u[0].numpy()
    for hi in range(3):
        kernel = [c[hi] @ np.linalg.matrix_power(a[hi], m) @ gamma[hi] for m in range(2 * n)]
        for ch in range(hi * 2, hi * 2 + 2):
            ref = [sum(kernel[m] * un[t - m, ch] for m in range(t + 1)) for t in range(2 * n)]
            np.testing.assert_allclose(y[:, ch], ref, rtol=1e-10, atol=1e-12)


def test_token_chunks_carry_state() -> None:
    """Scanning a timestep token by token (state carried) gives the same spikes as in one go."""
    core = DendriticCore(heads=2, head_dim=4, k=8)
    randomize(core, seed=2)
    u = (torch.rand(3, 10, 8, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    with torch.no_grad():
        whole, x_whole = core.step(u, core.init_state(3))
        x = core.init_state(3)
        parts = []
        for i in range(10):
            s, x = core.step(u[:, i : i + 1], x)
            parts.append(s)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=0, atol=0)
    torch.testing.assert_close(x, x_whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid", [(3, 4), (6, 6)])
@pytest.mark.parametrize("train", [False, True])
def test_step_equals_forward(grid: tuple[int, int], train: bool) -> None:
    torch.manual_seed(0)
    dim, heads, t_steps, batch = 16, 2, 5, 2
    att = LRFDyn(dim, heads, grid, k=4)
    randomize(att.core, seed=11)
    lively(att)
    att.train(train)
    for m in att.modules():  # batch statistics span T x B in `forward`, B in `step`: use the
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # running ones for both
            m.eval()
    x = (torch.rand(t_steps, batch, grid[0] * grid[1], dim) < 0.3).float()
    with torch.set_grad_enabled(train):
        whole = att(x)
        state = att.init_state(batch)
        outs = []
        for x_t in x:
            y, state = att.step(x_t, state)
            outs.append(y)
    stepped = torch.stack(outs)
    assert state["core"].abs().sum() > 0  # the core was driven
    torch.testing.assert_close(stepped, whole, rtol=0, atol=1e-5)
    # the state has the same size at every timestep: O(k D) for the core
    assert state["core"].shape == (batch, heads, 4, dim // heads)


def test_attention_spikes_against_numpy() -> None:
    """Inside the attention, the core's spikes equal the numpy equations on u = k ⊙ v."""
    torch.manual_seed(1)
    att = LRFDyn(8, 2, (2, 2), k=3).double().eval()
    randomize(att.core, seed=4)
    lively(att)
    x = (torch.rand(4, 1, 4, 8, dtype=torch.float64) < 0.5).double()
    seen: list[torch.Tensor] = []
    orig = att.core.forward_seq

    def spy(u, st):  # u[T, 1, N, D]: the T * N tokens in order as [1, T * N, D]
        s, st = orig(u, st)
        seen.extend(t.transpose(0, 1).flatten(1, 2) for t in (u, s))
        return s, st

    att.core.forward_seq = spy
    with torch.no_grad():
        att(x)
    u = torch.cat(seen[0::2], 1).numpy()
    s_ref, _ = numpy_scan(att.core, u)
    assert u.sum() > 0 and 0 < s_ref.sum() < s_ref.size
    np.testing.assert_array_equal(torch.cat(seen[1::2], 1).numpy(), s_ref)


def test_gradient_reaches_a_gamma_c() -> None:
    torch.manual_seed(2)
    att = LRFDyn(16, 2, (3, 3), k=4)
    randomize(att.core, seed=5)
    lively(att)
    x = (torch.rand(3, 2, 9, 16) < 0.4).float()
    att(x).pow(2).mean().backward()
    core = att.core
    for name in ("decay_logit", "lower_raw", "upper_raw", "gamma", "readout_rest"):
        grad = getattr(core, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    assert (core.lower_raw.grad[:, 0] == 0).all()  # no compartment below the soma
    assert (core.state_peak > 0).all()  # training records the state's peak for the quantizer


def test_decays_are_shifts() -> None:
    core = DendriticCore(heads=2, head_dim=2, k=8)
    randomize(core, seed=9)
    shifts = core.decay_shift().detach()
    assert torch.equal(shifts, shifts.round())
    assert shifts.min() >= 1 and shifts.max() <= core.max_shift
    a = torch.diagonal(core.transition().detach(), dim1=-2, dim2=-1)
    torch.testing.assert_close(a, 1 - 2.0**-shifts)
