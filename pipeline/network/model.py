"""The spiking vision transformer: a stem, L blocks of attention + MLP, a linear head.

Stepwise and whole-sequence inference compute the same function: `step(frame, state)` runs one
timestep on explicit state (nested per module, `{"stem": ..., "blocks": [...]}`, owned by the
caller and constant in size; `network.state`), and
`forward(frames[T])` runs the same layers over the sequence, batching the stateless conv,
linear and norm layers over T x B and scanning only the neurons (and the attention, which
scans its own neurons). In eval mode the two agree (spikes exactly, logits to 1e-5).

The block layout is part of the config (`layout`, `LAYOUTS`): which stem (`stem.py`), which
residual stream (`blocks.py`), whether the head reads the features through a neuron, and
whether the output projection and MLP linears carry a bias:

- `spikestream` (the default; configs and checkpoints without a `layout` key): SPS stem,
  membrane-shortcut blocks, no bias, linear head.
- `spikformer` (Spikformer): SPS stem, `x + SN(Attn(x))` blocks with spiking MLPs, biases,
  linear head on the mean over tokens.
- `ms` (Spike-driven Transformer, STAtten): MS-SPS stem, membrane-shortcut blocks, biases, and
  a head LIF on the mean over tokens before the linear head.

The head gives per-step logits; the papers' models average them over T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.blocks import BLOCKS
from spikestream.pipeline.network.neurons import LIF, donated_state
from spikestream.pipeline.network.state import State, state_nbytes
from spikestream.pipeline.network.stem import (  # noqa: F401  (names other modules import)
    MSSPS,
    POOLS,
    SPS,
    STEM_STRIDES,
    StemStage,
    max_pool_3s2_,
)

__all__ = ["LAYOUTS", "Layout", "SpikingTransformer", "normalize_config", "state_nbytes"]


@dataclass(frozen=True)
class Layout:
    """A block layout: stem (`"sps"` or `"ms_sps"`), block (a `blocks.BLOCKS` key), a head
    LIF or not, biases in the output projection and MLP linears or not."""

    stem: str
    block: str
    head_lif: bool
    bias: bool


LAYOUTS: dict[str, Layout] = {
    "spikestream": Layout("sps", "ms", head_lif=False, bias=False),
    "spikformer": Layout("sps", "spikformer", head_lif=False, bias=True),
    "ms": Layout("ms_sps", "ms", head_lif=True, bias=True),
}

class SpikingTransformer(nn.Module):
    """Spiking vision transformer built from a config dict (see `configs.py`).

    `config` holds `input_size`, `in_channels`, `num_classes`, `embed_dim`, `depth`, `heads`,
    `time_steps`, `mlp_ratio`, `stem_pool` (one bool per stem stage: halve after it or not),
    `stem_stride` (stride of the first stem conv: 1, 2, 4 or 8), `pool` ("max" or "avg"),
    `layout` (a `LAYOUTS` key), `attention` (a registered key) and `attention_kwargs`.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = normalize_config(config)
        self.config = cfg
        self.attention_key: str = cfg["attention"]
        self.input_size: tuple[int, int] = tuple(cfg["input_size"])  # type: ignore[assignment]
        self.in_channels: int = cfg["in_channels"]
        self.num_classes: int = cfg["num_classes"]
        self.time_steps: int = cfg["time_steps"]
        self.layout: Layout = LAYOUTS[cfg["layout"]]
        stem_args = (cfg["in_channels"], cfg["embed_dim"], self.input_size,
                     tuple(cfg["stem_pool"]))
        if self.layout.stem == "sps":
            self.sps: nn.Module = SPS(*stem_args, cfg["pool"], cfg["stem_stride"])
        else:
            if cfg["pool"] != "max":
                raise ValueError(f"layout {cfg['layout']!r} max-pools; pool must be 'max'")
            self.sps = MSSPS(*stem_args, cfg["stem_stride"])
        self.grid = self.sps.grid
        self.num_tokens = self.grid[0] * self.grid[1]
        block = BLOCKS[self.layout.block]
        self.blocks = nn.ModuleList(
            block(cfg["attention"], cfg["embed_dim"], cfg["heads"], self.grid, cfg["mlp_ratio"],
                  cfg["attention_kwargs"], bias=self.layout.bias)
            for _ in range(cfg["depth"])
        )
        if self.layout.head_lif:
            self.head_lif = LIF()
        self.head = nn.Linear(cfg["embed_dim"], cfg["num_classes"])

    @property
    def causal(self) -> bool:
        """Whether `step` can run (False for mechanisms that need future frames)."""
        return all(b.attn.causal for b in self.blocks)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Zero state for `batch` streams, `{"stem": ..., "blocks": [...]}`, constant in size."""
        if device is None:
            device = self.head.weight.device
        state = {"stem": self.sps.init_state(batch, device=device, dtype=dtype),
                 "blocks": [b.init_state(batch, device=device, dtype=dtype) for b in self.blocks]}
        if self.layout.head_lif:
            state["head"] = torch.zeros(batch, self.head.in_features, device=device, dtype=dtype)
        return state

    def _check(self, frames: Tensor, ndim: int) -> None:
        want = (self.in_channels, *self.input_size)
        if frames.dim() != ndim or tuple(frames.shape[-3:]) != want:
            lead = "[T, B, " if ndim == 5 else "[B, "
            raise ValueError(
                f"expected frames {lead}P, H, W] with (P, H, W) = {want}, "
                f"got shape {tuple(frames.shape)}"
            )

    def step(self, frame: Tensor, state: State, donate: bool = False) -> tuple[Tensor, State]:
        """One timestep: `frame[B, P, H, W]` -> `(logits[B, C], new state)`.

        `donate=True` (without autograd): the caller gives up `state`, and the LIF membranes,
        nearly all of it, are updated in their own storage, so the step allocates no new
        state (the same values either way)."""
        with donated_state(donate):
            return self._step(frame, state)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        self._check(frame, 4)
        x, stem = self.sps.step(frame, state["stem"])
        blocks = []
        for block, st in zip(self.blocks, state["blocks"], strict=True):
            x, st = block.step(x, st)
            blocks.append(st)
        new = {"stem": stem, "blocks": blocks}
        features = x.mean(dim=1)
        if self.layout.head_lif:
            features, new["head"] = self.head_lif.step(features, state["head"], consume=True)
        return self.head(features), new

    def forward(self, frames: Tensor) -> Tensor:
        """Whole sequence: `frames[T, B, P, H, W]` -> `logits[T, B, C]`."""
        self._check(frames, 5)
        x = self.sps(frames)
        for block in self.blocks:
            x = block(x)
        features = x.mean(dim=2)
        if self.layout.head_lif:
            features = self.head_lif(features)
        return self.head(features)


DEFAULTS: dict[str, Any] = {
    "input_size": (64, 64),
    "in_channels": 2,
    "num_classes": 10,
    "embed_dim": 64,
    "depth": 1,
    "heads": 4,
    "time_steps": 8,
    "mlp_ratio": 4,
    "stem_pool": (True, True, True),
    "stem_stride": 1,
    "pool": "max",
    "layout": "spikestream",
    "attention": "ssa",
    "attention_kwargs": {},
}


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults, reject unknown keys, and make the dict JSON-able (lists, not tuples)."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    size = cfg["input_size"]
    if isinstance(size, int):
        size = (size, size)
    cfg["input_size"] = [int(size[0]), int(size[1])]
    cfg["stem_pool"] = [bool(p) for p in cfg["stem_pool"]]
    cfg["attention_kwargs"] = dict(cfg["attention_kwargs"] or {})
    for key in ("in_channels", "num_classes", "embed_dim", "depth", "heads", "time_steps",
                "mlp_ratio", "stem_stride"):
        if int(cfg[key]) < 1:
            raise ValueError(f"model config {key} must be >= 1, got {cfg[key]}")
        cfg[key] = int(cfg[key])
    if cfg["layout"] not in LAYOUTS:
        raise ValueError(f"model config layout must be one of {sorted(LAYOUTS)}, "
                         f"got {cfg['layout']!r}")
    if cfg["stem_stride"] not in STEM_STRIDES:
        raise ValueError(f"model config stem_stride must be one of {STEM_STRIDES}, "
                         f"got {cfg['stem_stride']}")
    return cfg
