"""Attention mechanisms in the numba engine: the registry that says which mechanism runs on
which kernel and how its weights are packed (`NUMBA_ATTENTION`).

An entry holds the kernel code (`numba_attention_kernels`, whose `attend` dispatches on it),
the packer that turns one attention module into the kernel's arrays, neurons and options
(`Packed`), and a check of the module's options (None when the kernel can run it). A
mechanism joins the engine with a kernel and a `@register_numba(key, code)` packer; the
engine (`numba_step`) and `unsupported` read the registry and keep no lists of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spikestream.pipeline.engines import numba_attention_kernels as AK
from spikestream.pipeline.network.attention import Attention
from spikestream.pipeline.network.attention.lrf_dyn import DendriticCore
from spikestream.pipeline.network.neurons import LIF


def f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())


def pack_bn(bn: nn.modules.batchnorm._BatchNorm, bias: torch.Tensor | None = None) -> np.ndarray:
    """Eval batch norm as `[alpha; shift; bias]` (`(y + bias) * alpha + shift`, `bias` that of
    the layer before it, zeros without one), in float32 as ATen's CPU kernel computes it."""
    mean, var = f32(bn.running_mean), f32(bn.running_var)
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))
    gamma = f32(bn.weight) if bn.weight is not None else np.ones_like(mean)
    beta = f32(bn.bias) if bn.bias is not None else np.zeros_like(mean)
    alpha = (invstd * gamma).astype(np.float32)
    b = f32(bias) if bias is not None else np.zeros_like(mean)
    return np.stack([alpha, (beta - mean * alpha).astype(np.float32), b])


def pack_lif(lif: nn.Module) -> tuple[float, float, float]:
    if not isinstance(lif, LIF):
        raise ValueError(f"numba kernels run LIF neurons only, got {type(lif).__name__}")
    beta = float(lif.beta) if torch.is_tensor(lif.beta) else lif.beta
    return lif.tau, beta, float(lif.threshold)


def pack_proj(p: nn.Module) -> list[np.ndarray]:
    """A `TokenProj` as `[W^T, BN]` (its linear's bias, if any, in the norm's third row)."""
    return [f32(p.linear.weight.t()), pack_bn(p.bn, p.linear.bias)]


def pack_local(local: nn.Module) -> np.ndarray:
    """`LocalRF`'s depthwise kernels as `[n_dil * 9, D]` (row `di * 9 + ky * 3 + kx`)."""
    with torch.no_grad():
        convs = [f32(c.weight[:, 0].permute(1, 2, 0).reshape(9, -1)) for c in local.convs]
    return np.ascontiguousarray(np.concatenate(convs))


@dataclass
class Packed:
    """One attention module's weights for its kernel (module docstring)."""

    arrays: list[np.ndarray]
    neurons: list[tuple[float, float, float]]
    ints: list[int]
    floats: list[float]


@dataclass(frozen=True)
class NumbaAttention:
    """A registry entry: the kernel code, the packer, and a check of a module's options."""

    kernel: int
    pack: Callable[[Attention], Packed]
    check: Callable[[Attention], str | None]


NUMBA_ATTENTION: dict[str, NumbaAttention] = {}


def _runs(attn: Attention) -> str | None:
    return None


def register_numba(key: str, kernel: int, check: Callable[[Attention], str | None] = _runs):
    """Decorator on a packer: attention `key` runs on numba kernel `kernel`."""

    def deco(pack: Callable[[Attention], Packed]) -> Callable[[Attention], Packed]:
        if key in NUMBA_ATTENTION:
            raise ValueError(f"numba attention {key!r} registered twice")
        NUMBA_ATTENTION[key] = NumbaAttention(kernel, pack, check)
        return pack

    return deco


def _shared(attn: Attention) -> Packed:
    """Q, K, V, the output projection and the four neurons (q, k, v, attn) of `SpikingQKV`."""
    arrays = [a for p in (attn.q.proj, attn.k.proj, attn.v.proj, attn.proj) for a in pack_proj(p)]
    neurons = [pack_lif(n) for n in (attn.q.lif, attn.k.lif, attn.v.lif, attn.attn_lif)]
    return Packed(arrays, neurons, [attn.heads], [])


@register_numba("ssa", AK.KERNEL_SSA)
def _pack_ssa(attn: Attention) -> Packed:
    packed = _shared(attn)
    packed.ints.append(0)
    packed.floats.append(attn.scale)
    return packed


@register_numba("sdsa", AK.KERNEL_SDSA)
def _pack_sdsa(attn: Attention) -> Packed:
    packed = _shared(attn)
    packed.ints.append(int(attn.dvs_pool))
    packed.floats.append(0.0)
    return packed


def _core_is_float(attn: Attention) -> str | None:
    if type(attn.core) is not DendriticCore:
        return f"its core is a {type(attn.core).__name__}, not the float DendriticCore"
    return None


@register_numba("lrf_dyn", AK.KERNEL_LRF_DYN, check=_core_is_float)
def _pack_lrf_dyn(attn: Attention) -> Packed:
    packed = _shared(attn)
    core = attn.core
    with torch.no_grad():
        lower, upper = core.couplings()
        packed.arrays += [f32(core.decays()), f32(lower), f32(upper), f32(core.gamma),
                          f32(core.readout())]
    packed.arrays.append(pack_local(attn.local))
    packed.ints += [len(attn.local.dilations), *attn.local.dilations]
    packed.floats.append(float(core.theta))
    return packed


@register_numba("lrf_ssa", AK.KERNEL_LRF_SSA)
def _pack_lrf_ssa(attn: Attention) -> Packed:
    packed = _shared(attn)
    packed.arrays.append(pack_local(attn.local))
    packed.ints += [len(attn.local.dilations), *attn.local.dilations]
    packed.floats += [attn.scale, float(attn.lam.detach())]
    return packed


@register_numba("a2os2a", AK.KERNEL_A2OS2A)
def _pack_a2os2a(attn: Attention) -> Packed:
    arrays = [*pack_proj(attn.q.proj), *pack_proj(attn.k), *pack_proj(attn.v),
              *pack_proj(attn.proj)]
    decay = attn.v_lif.decay
    # the ternary neuron: tau, decay (-1: the tau form) and v_th
    v_lif = (attn.v_lif.tau, -1.0 if decay is None else decay, attn.v_lif.v_th)
    return Packed(arrays, [pack_lif(attn.q.lif), v_lif, pack_lif(attn.attn_lif)],
                  [attn.heads, int(attn.reassociate)], [1.0])


@register_numba("sssa", AK.KERNEL_SSSA)
def _pack_sssa(attn: Attention) -> Packed:
    arrays = [a for p in (attn.q.proj, attn.k.proj, attn.v.proj, attn.proj)
              for a in pack_proj(p)]
    with torch.no_grad():
        arrays += [f32(torch.sigmoid(attn.lam_logit)), f32(attn.weight),
                   f32(attn.threshold)[None]]
    neurons = [pack_lif(n) for n in (attn.q.lif, attn.k.lif, attn.v.lif)]
    return Packed(arrays, neurons, [attn.heads], [1.0])


def _causal(attn: Attention) -> str | None:
    return None if attn.causal else "its chunk mode is not causal (mode='causal' streams)"


@register_numba("statten", AK.KERNEL_STATTEN, check=_causal)
def _pack_statten(attn: Attention) -> Packed:
    packed = _shared(attn)
    packed.ints += [attn.chunk, int(attn.dvs)]
    packed.floats.append(attn.scale)
    return packed
