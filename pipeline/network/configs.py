"""Model configurations as data, created by name (timm style): `create_model("tiny", "ssa")`.

Each entry overrides `model.DEFAULTS`. Stem channels follow from `embed_dim` and the number of
stem stages (`D / 2^(S-1-i)` for stage i of S, as Spikformer's SPS), and the token grid from
`input_size` and `stem_pool` (halved after every stage marked True).

Configs listed in `NATIVE_INPUT` keep their token grid for larger inputs, and get cheaper
rather than dearer: asked for an input k = 2 or 4 times their native size (in both axes),
the first stem conv patchifies with stride 2k (a (2k+1)x(2k+1) kernel that sees every pixel)
and the stem's last down-sampling is dropped, so each stem stage runs at half the resolution
it has at the native size; at k = 8 the conv has stride 8 and every down-sampling is kept.
This applies unless the caller sets `stem_stride` or `stem_pool` (a `stem_pool` of the
caller's with no `stem_stride` gets stride k). `create_model("tiny", input_size=(128, 128))`
thus has a 5x5 stride-4 first conv (128x128 -> 32x32), stages at 32, 16 and 8 pixels, and
the 8x8 token grid of tiny at 64x64, for about half the multiply-accumulates. Models rebuilt
from a stored config (checkpoints) are not affected: they carry their own `stem_stride` (1
where the key is missing) and `stem_pool`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from spikestream.pipeline.network.model import STEM_STRIDES, SpikingTransformer

CONFIGS: dict[str, dict[str, Any]] = {
    # fast enough for CPU tests and demos: 64x64 input -> 8x8 tokens (larger inputs: a
    # patchifying first conv, see NATIVE_INPUT)
    "tiny": {
        "input_size": (64, 64),
        "embed_dim": 64,
        "depth": 1,
        "heads": 4,
        "time_steps": 8,
        "stem_pool": (True, True, True),
    },
    # DVS resolution with a quarter of the papers' width: 128x128 -> 8x8 tokens
    "small": {
        "input_size": (128, 128),
        "embed_dim": 128,
        "depth": 2,
        "heads": 8,
        "time_steps": 16,
        "stem_pool": (True, True, True, True),
    },
    # Spikformer's DVS model (ZK-Zhou/spikformer cifar10dvs/model.py, DVS128 Gesture setting:
    # embed_dims=256, num_heads=16, depths=2, T=16, four stem stages each followed by a
    # max-pool: 8x8 tokens); 2,566,923 parameters
    "spikformer-2-256": {
        "input_size": (128, 128),
        "num_classes": 11,
        "embed_dim": 256,
        "depth": 2,
        "heads": 16,
        "time_steps": 16,
        "stem_pool": (True, True, True, True),
        "layout": "spikformer",
        "attention": "ssa",
    },
    # the Spike-driven Transformer's Gesture model (BICLab/Spike-Driven-Transformer
    # conf/gesture/2_256_200E_t16.yml: 8 heads, pooling_stat "0111": 16x16 tokens); 2,566,923
    # parameters (the official model's 2,567,051 less its unused talking-heads convs)
    "sdt-2-256": {
        "input_size": (128, 128),
        "num_classes": 11,
        "embed_dim": 256,
        "depth": 2,
        "heads": 8,
        "time_steps": 16,
        "stem_pool": (False, True, True, True),
        "layout": "ms",
        "attention": "sdsa",
    },
    # STAtten's N-Caltech101 model (Intelligent-Computing-Lab-Yale/STAtten
    # conf/ncaltech101/2_256_200E_t16.yml: 64x64 input, pooling_stat "0011": 16x16 tokens,
    # chunks of 4 timesteps, DVS branch); 2,590,053 parameters (official: 2,590,181)
    "statten-2-256": {
        "input_size": (64, 64),
        "num_classes": 101,
        "embed_dim": 256,
        "depth": 2,
        "heads": 8,
        "time_steps": 16,
        "stem_pool": (False, False, True, True),
        "layout": "ms",
        "attention": "statten",
    },
}

#: Attention options a config gives a key unless the caller sets them: the papers' DVS code
#: scales SSA by 0.25, STAtten's config attends over chunks of 4 with its DVS branch.
ATTENTION_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "spikformer-2-256": {"ssa": {"scale": 0.25}, "lrf_ssa": {"scale": 0.25}},
    "sdt-2-256": {"ssa": {"scale": 0.25}, "lrf_ssa": {"scale": 0.25}},
    "statten-2-256": {"ssa": {"scale": 0.25}, "lrf_ssa": {"scale": 0.25},
                      "statten": {"chunk": 4, "dvs": True}},
}


#: Native input size of configs whose stem patchifies larger inputs down to it (see above).
NATIVE_INPUT: dict[str, tuple[int, int]] = {"tiny": (64, 64)}


def _multiple_of_native(config: str, input_size: int | tuple[int, int]) -> int:
    """k where `input_size` is k = 2, 4 or 8 times `config`'s native size, else 1."""
    native = NATIVE_INPUT.get(config)
    if native is None:
        return 1
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    for k in (8, 4, 2):
        if (h, w) == (native[0] * k, native[1] * k):
            return k
    return 1


def native_stem(config: str, input_size: int | tuple[int, int],
                stem_pool: Sequence[bool] | None = None) -> dict[str, Any]:
    """The stem `create_model` gives `config` at `input_size`: `{"stem_stride": s}`, plus
    `"stem_pool"` where its last down-sampling is dropped (see the module docstring).
    `stem_pool`: the caller's, which is kept (with stride k)."""
    k = _multiple_of_native(config, input_size)
    if k == 1:
        return {"stem_stride": 1}
    if stem_pool is not None or 2 * k not in STEM_STRIDES:
        return {"stem_stride": k}
    pools = list(get_config(config)["stem_pool"])
    last = max(i for i, down in enumerate(pools) if down)
    pools[last] = False
    return {"stem_stride": 2 * k, "stem_pool": tuple(pools)}


def list_configs() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(CONFIGS)


def get_config(name: str) -> dict[str, Any]:
    """A copy of the named config (without defaults filled in)."""
    try:
        return copy.deepcopy(CONFIGS[name])
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {list_configs()}") from None


def create_model(
    config: str = "tiny",
    attention: str | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> SpikingTransformer:
    """Build the named config with the given attention key (default: the config's own, else
    `ssa`); `attention_kwargs` go over the config's `ATTENTION_DEFAULTS` for that key;
    `overrides` replace config entries (`input_size`, `in_channels`, `num_classes`,
    `embed_dim`, `depth`, `heads`, `time_steps`, `mlp_ratio`, `stem_pool`, `stem_stride`,
    `pool`, `layout`); configs in `NATIVE_INPUT` get a patchifying first stem conv at multiples
    of their native input size unless `stem_stride` is given (`native_stem`)."""
    cfg = get_config(config)
    cfg.update(overrides)
    if "stem_stride" not in overrides and "input_size" in cfg:
        cfg.update(native_stem(config, cfg["input_size"], overrides.get("stem_pool")))
    key = attention or cfg.get("attention", "ssa")
    cfg["attention"] = key
    cfg["attention_kwargs"] = {**ATTENTION_DEFAULTS.get(config, {}).get(key, {}),
                               **(attention_kwargs or {})}
    return SpikingTransformer(cfg)
