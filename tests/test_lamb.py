"""LAMB against its update equations, written out in numpy (float64) step by step."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spikestream.pipeline.lamb import Lamb, no_decay_groups
from spikestream.pipeline.training import TrainConfig, make_optimizer


def lamb_reference(params, grads_per_step, lr, wd, b1=0.9, b2=0.999, eps=1e-6, max_norm=1.0):
    """`params`: list of (array, decays); `grads_per_step`: list of lists of arrays."""
    ps = [p.astype(np.float64).copy() for p, _ in params]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    for t, grads in enumerate(grads_per_step, start=1):
        norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
        scale = max_norm / norm if max_norm is not None and norm > max_norm else 1.0
        for i, ((_, decays), g) in enumerate(zip(params, grads, strict=True)):
            g = g.astype(np.float64) * scale
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
            r = 1.0
            if decays and wd:
                u = u + wd * ps[i]
                wn, un = np.linalg.norm(ps[i]), np.linalg.norm(u)
                r = wn / un if wn > 0 and un > 0 else 1.0
            ps[i] = ps[i] - lr * r * u
    return ps


def test_lamb_follows_its_equations():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(5, 3)), rng.normal(size=3)
    steps = [[rng.normal(size=(5, 3)) * s, rng.normal(size=3) * s] for s in (0.1, 3.0, 0.5, 2.0)]
    w = nn.Parameter(torch.tensor(w0))
    b = nn.Parameter(torch.tensor(b0))
    opt = Lamb([{"params": [w], "weight_decay": 0.06}, {"params": [b], "weight_decay": 0.0}],
               lr=3e-2, max_grad_norm=1.0)
    for grads in steps:
        w.grad, b.grad = (torch.tensor(g) for g in grads)
        opt.step()
    want = lamb_reference([(w0, True), (b0, False)], steps, lr=3e-2, wd=0.06)
    np.testing.assert_allclose(w.detach().numpy(), want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), want[1], rtol=1e-12, atol=1e-12)
    # the trust ratio makes a step's size proportional to the weight norm, not the gradient's
    assert not np.allclose(want[0], w0)


def test_make_optimizer_groups_for_lamb():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    opt = make_optimizer(model, TrainConfig(optimizer="lamb", weight_decay=0.06, lr=3e-4))
    assert isinstance(opt, Lamb)
    decay, plain = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert decay["weight_decay"] == 0.06 and plain["weight_decay"] == 0.0
    assert len(plain["params"]) == 3 and opt.param_groups[0]["lr"] == 3e-4
    assert len(no_decay_groups(model, 0.1)[1]["params"]) == 3
    assert isinstance(make_optimizer(model, TrainConfig()), torch.optim.AdamW)
