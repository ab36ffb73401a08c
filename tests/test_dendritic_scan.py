"""The compiled LRF-Dyn scan against the reference loop: same spikes and state, and the
gradients autograd computes through the loop (BPTT over several timesteps)."""

from __future__ import annotations

import copy

import pytest
import torch

from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore


def _cores(heads: int, head_dim: int, k: int, theta: float, seed: int, spread: float = 1.0):
    """The compiled core and a loop copy, with parameters moved away from their initial
    values by `spread` (couplings, gains, readouts and decays all live)."""
    torch.manual_seed(seed)
    core = DendriticCore(heads, head_dim, k=k, theta=theta).double()
    with torch.no_grad():
        core.lower_raw.normal_(0, spread)
        core.upper_raw.normal_(0, spread)
        core.gamma.add_(spread * (torch.rand_like(core.gamma) - 0.5))
        core.readout_rest.add_(spread * (torch.rand_like(core.readout_rest) - 0.5))
        core.decay_logit.add_(spread * torch.randn_like(core.decay_logit))
    loop = copy.deepcopy(core)
    loop.compiled_scan = False
    return core, loop


def _run(core: DendriticCore, us: list[torch.Tensor], x0: torch.Tensor, w_s, w_x):
    x = x0
    loss = 0.0
    spikes = []
    for u, w in zip(us, w_s, strict=True):
        s, x = core.step(u, x)
        spikes.append(s)
        loss = loss + (s * w).sum()
    loss = loss + (x * w_x).sum()
    return loss, torch.stack(spikes), x


@pytest.mark.parametrize(("heads", "head_dim", "k", "n", "batch", "theta", "binary"), [
    (2, 4, 8, 16, 3, 1.0, True),
    (4, 8, 3, 9, 2, 0.7, False),
    (1, 5, 1, 12, 1, 1.0, False),
    (2, 3, 4, 10, 2, float("inf"), False),
])
def test_gradients_equal_autograd_through_the_loop(heads, head_dim, k, n, batch, theta, binary):
    fast, loop = _cores(heads, head_dim, k, theta, seed=heads * 100 + k)
    g = torch.Generator().manual_seed(7)
    d = heads * head_dim
    steps = 3
    if binary:
        us = [(torch.rand(batch, n, d, generator=g) < 0.4).double() for _ in range(steps)]
    else:
        us = [torch.randn(batch, n, d, generator=g, dtype=torch.float64) for _ in range(steps)]
    w_s = [torch.randn(batch, n, d, generator=g, dtype=torch.float64) for _ in range(steps)]
    w_x = torch.randn(batch, heads, k, head_dim, generator=g, dtype=torch.float64)
    x0 = 0.3 * torch.randn(batch, heads, k, head_dim, generator=g, dtype=torch.float64)

    grads = []
    for core in (fast, loop):
        ins = [u.clone().requires_grad_(True) for u in us]
        x_in = x0.clone().requires_grad_(True)
        loss, spikes, x = _run(core, ins, x_in, w_s, w_x)
        loss.backward()
        params = [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                  for p in core.parameters()]
        grads.append((spikes.detach(), x.detach(), [u.grad for u in ins], x_in.grad, params))
    (s1, x1, gu1, gx1, gp1), (s2, x2, gu2, gx2, gp2) = grads
    assert torch.equal(s1, s2)
    assert s1.sum() > 0 or theta == float("inf")
    torch.testing.assert_close(x1, x2, rtol=1e-10, atol=1e-10)
    for a, b in zip(gu1, gu2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx2, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(fast.named_parameters(), gp1, gp2, strict=True):
        # one compartment has no couplings and no free readout; no spikes, no readout gradient
        if k > 1 and not (name == "readout_rest" and theta == float("inf")):
            assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_float32_training_step_matches_the_loop_and_tracks_the_peak():
    fast, loop = _cores(4, 16, 8, 1.0, seed=3, spread=0.2)
    fast, loop = fast.float().train(), loop.float().train()
    u = (torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    x0 = fast.init_state(2)
    s1, x1 = fast.step(u, x0)
    s2, x2 = loop.step(u, x0)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(x1, x2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.state_peak, loop.state_peak)
    assert fast.state_peak.sum() > 0


def test_inference_uses_the_compiled_scan_and_agrees():
    fast, loop = _cores(2, 8, 8, 1.0, seed=5)
    u = (torch.rand(1, 25, 16, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    with torch.no_grad():
        s1, x1 = fast.step(u, fast.init_state(1, dtype=torch.float64))
        s2, x2 = loop.step(u, loop.init_state(1, dtype=torch.float64))
    assert torch.equal(s1, s2)
    torch.testing.assert_close(x1, x2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_keeps_no_per_token_state(mode):
    """Without autograd the compiled scan keeps no state per token for a backward pass (its
    parameters still require grad): tracemalloc, which sees numpy's arrays, stays below that
    `[N, h, k, d]` array's size, and the result is the training path's."""
    import tracemalloc

    heads, d, k, n = 4, 16, 8, 512
    core = DendriticCore(heads, d, k=k, theta=1.0)
    u = (torch.rand(1, n, heads * d, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    x0 = core.init_state(1)
    want_s, want_x = core.step(u, x0)  # autograd on: the state per token is kept
    with mode():
        core.step(u, x0)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            s, x = core.step(u, x0)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert peak < n * heads * k * d * 4 / 2, peak
    assert torch.equal(s, want_s.detach()) and torch.equal(x, want_x.detach())
