"""Model configurations as data, created by name (timm style): `create_model("tiny", "ssa")`.

Each entry overrides `model.DEFAULTS`. Stem channels follow from `embed_dim` and the number of
stem stages (`D / 2^(S-1-i)` for stage i of S, as Spikformer's SPS), and the token grid from
`input_size` and `stem_pool` (halved after every stage marked True).

Configs listed in `NATIVE_INPUT` keep their token grid and cost for larger inputs: asked for
an input k times their native size (k = 2, 4 or 8 in both axes), they get `stem_stride` k, a
strided first stem conv, unless the caller sets `stem_stride`. `create_model("tiny",
input_size=(128, 128))` therefore runs its stem at 64x64 after one stride-2 conv and has the
same 8x8 token grid as at 64x64. Models rebuilt from a stored config (checkpoints) are not
affected: they carry their own `stem_stride` (1 where the key is missing).
"""

from __future__ import annotations

import copy
from typing import Any

from spikestream.pipeline.model import SpikingTransformer

CONFIGS: dict[str, dict[str, Any]] = {
    # fast enough for CPU tests and demos: 64x64 input -> 8x8 tokens (larger inputs: a strided
    # first conv, see NATIVE_INPUT)
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
    # the papers' DVS setting (Spikformer's CIFAR10-DVS / DVS128 Gesture code: embed_dims=256,
    # num_heads=16, depths=2, four stem stages each followed by a max-pool, T = 16)
    "spikformer-2-256": {
        "input_size": (128, 128),
        "embed_dim": 256,
        "depth": 2,
        "heads": 16,
        "time_steps": 16,
        "stem_pool": (True, True, True, True),
    },
}


#: Native input size of configs whose stem strides larger inputs down to it (see above).
NATIVE_INPUT: dict[str, tuple[int, int]] = {"tiny": (64, 64)}


def native_stem_stride(config: str, input_size: int | tuple[int, int]) -> int:
    """The `stem_stride` `create_model` gives `config` at `input_size` (1 = a plain stem)."""
    native = NATIVE_INPUT.get(config)
    if native is None:
        return 1
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    for k in (8, 4, 2):
        if (h, w) == (native[0] * k, native[1] * k):
            return k
    return 1


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
    attention: str = "ssa",
    attention_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> SpikingTransformer:
    """Build the named config with the given attention key; `overrides` replace config entries
    (`input_size`, `in_channels`, `num_classes`, `embed_dim`, `depth`, `heads`, `time_steps`,
    `mlp_ratio`, `stem_pool`, `stem_stride`, `pool`); configs in `NATIVE_INPUT` get a strided
    first stem conv at multiples of their native input size unless `stem_stride` is given."""
    cfg = get_config(config)
    cfg.update(overrides)
    if "stem_stride" not in overrides and "input_size" in cfg:
        cfg["stem_stride"] = native_stem_stride(config, cfg["input_size"])
    cfg["attention"] = attention
    cfg["attention_kwargs"] = dict(attention_kwargs or {})
    return SpikingTransformer(cfg)
