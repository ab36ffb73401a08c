"""Helpers shared by the model tests: every registered attention key and a spiking setup."""

from __future__ import annotations

import torch
from torch import nn

from spikestream.pipeline.network.attention import ATTENTION

KEYS = sorted(ATTENTION)


def attention_kwargs(key: str) -> dict:
    """Options that make a mechanism steppable (STAtten's chunk mode cannot step)."""
    return {"mode": "causal"} if key == "statten" else {}


def excite(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine terms so that every neuron layer spikes."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.05)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return module.eval()
