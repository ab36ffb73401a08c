"""LAMB (You et al., "Large Batch Optimization for Deep Learning", 2019), as the Spike-driven
Transformer's training script uses it (through timm's optimizer factory).

Per parameter `p` with gradient `g` at step t (bias-corrected Adam moments, then a layer-wise
trust ratio):

    m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p
    r = ||p|| / ||u||  (1 where either norm is 0; only where wd > 0 unless `always_adapt`)
    p = p - lr r u

Before the update, the gradients of all parameters are scaled together so that their global
norm is at most `max_grad_norm` (timm's default 1.0; None: no scaling). `no_decay_groups`
puts 1-D parameters (biases, norms, neuron constants) in a group without weight decay, as
timm's factory does, so they take plain Adam steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class Lamb(torch.optim.Optimizer):
    """LAMB; see the module docstring for the update."""

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float | None = 1.0,
                 always_adapt: bool = False) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"bad LAMB settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "always_adapt": always_adapt})
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        scale = 1.0
        if self.max_grad_norm is not None and grads:
            norm = math.sqrt(sum(float(torch.linalg.vector_norm(
                gr if gr.dtype in (torch.float32, torch.float64) else gr.float())) ** 2
                for gr in grads))
            if norm > self.max_grad_norm:
                scale = self.max_grad_norm / norm
        for group in self.param_groups:
            b1, b2 = group["betas"]
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad * scale
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                st["m"].mul_(b1).add_(grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (st["v"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                update = (st["m"] / (1 - b1 ** t)) / denom
                if wd:
                    update.add_(p, alpha=wd)
                ratio = 1.0
                if wd or group["always_adapt"]:
                    w_norm = float(torch.linalg.vector_norm(p))
                    u_norm = float(torch.linalg.vector_norm(update))
                    if w_norm > 0 and u_norm > 0 and math.isfinite(w_norm / u_norm):
                        ratio = w_norm / u_norm
                p.add_(update, alpha=-group["lr"] * ratio)
        return loss


def no_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: weight decay on matrices and kernels, none on 1-D parameters."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0}]
