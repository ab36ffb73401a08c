"""Gradients flow through every attention mechanism: each key fits a small fixed problem."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spikestream.pipeline import create_model
from spikestream.pipeline.network.attention import ATTENTION

CLASSES, T, PER_CLASS, SIZE = 4, 4, 6, 16


def quadrant_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Event frames `[T, B, 2, 16, 16]` whose events fall in the quadrant named by the label,
    with ON events in the first half of the sequence and OFF events in the second."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    x = (torch.rand(T, len(labels), 2, SIZE, SIZE, generator=g) < 0.03).float()  # noise
    h = SIZE // 2
    for i, c in enumerate(labels.tolist()):
        ys, xs = (c // 2) * h, (c % 2) * h
        blob = (torch.rand(T, 2, h, h, generator=g) < 0.35).float()
        blob[: T // 2, 1] = 0
        blob[T // 2 :, 0] = 0
        x[:, i, :, ys : ys + h, xs : xs + h] += blob
    return x, labels


@pytest.mark.parametrize("key", sorted(ATTENTION))
def test_each_mechanism_fits_a_small_problem(key: str) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", key, input_size=(SIZE, SIZE), num_classes=CLASSES,
                         embed_dim=16, heads=2, depth=1, stem_pool=(True, True), mlp_ratio=2)
    x, y = quadrant_problem()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    chance = math.log(CLASSES)
    losses = []
    model.train()
    for it in range(80):
        opt.zero_grad()
        logits = model(x).mean(0)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if it == 0:
            # the mechanism's own query projection receives gradient through the attention
            grad = model.blocks[0].attn.q.proj.linear.weight.grad
            assert grad is not None and grad.abs().sum() > 0, "no gradient through attention"
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.2 * chance:
            break
    assert losses[-1] < 0.2 * chance, f"{key}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert (logits.argmax(1) == y).float().mean().item() >= 0.9
