"""The spiking vision transformer: SPS stem, L blocks of attention + MLP, a linear head.

Stepwise and whole-sequence inference compute the same function: `step(frame, state)` runs one
timestep on explicit state (nested per module, `{"stem": ..., "blocks": [...]}`, owned by the
caller and constant in size; `network.state`), and
`forward(frames[T])` runs the same layers over the sequence, batching the stateless conv,
linear and norm layers over T x B and scanning only the neurons (and the attention, which
scans its own neurons). In eval mode the two agree (spikes exactly, logits to 1e-5).

Blocks use the Spike-driven Transformer's membrane shortcut so that every linear layer sees
binary spikes: `x = x + Attn(SN(x))`, `x = x + MLP(SN(x))` with
`MLP(s) = BN(W_2 SN(BN(W_1 s)))`, hidden width `mlp_ratio * D`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.attention import create_attention
from spikestream.pipeline.network.layers import TokenProj, batch_norm_
from spikestream.pipeline.network.neurons import LIF, grad_free
from spikestream.pipeline.network.state import State, state_nbytes

__all__ = ["SpikingTransformer", "normalize_config", "state_nbytes"]

POOLS = ("max", "avg")
STEM_STRIDES = (1, 2, 4, 8)


def _time_batched(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a stateless layer to `x[T, B, ...]` with T and B merged."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def max_pool_3s2_(x: Tensor) -> Tensor:
    """`max_pool2d(x, 3, stride=2, padding=1)` of a map with even height and width, as
    maxima of strided views (several times faster than the ATen kernel on one thread, which
    also computes indices; the same values: a maximum is exact). Works on bool maps too."""
    a, b = x[..., 0::2, :], x[..., 1::2, :]
    r = torch.maximum(a, b)  # rows 2i, 2i+1
    r[..., 1:, :] = torch.maximum(r[..., 1:, :], b[..., :-1, :])  # and row 2i-1
    a, b = r[..., 0::2], r[..., 1::2]
    out = torch.maximum(a, b)
    out[..., 1:] = torch.maximum(out[..., 1:], b[..., :-1])
    return out


class StemStage(nn.Module):
    """conv3x3 - BN - LIF, then optional 2x down-sampling (max-pool 3/2/1 or avg-pool 2/2).

    With `stride` s > 1 the conv is (s+1)x(s+1) with stride s and padding 1: window j covers
    pixels s*j-1 .. s*j+s-1, so neighbouring windows overlap by one pixel, every pixel is
    seen, and HxW maps to H/s x W/s; a cheap first stage for large inputs."""

    def __init__(self, c_in: int, c_out: int, pool: str | None, stride: int = 1) -> None:
        super().__init__()
        if stride not in STEM_STRIDES:
            raise ValueError(f"stem stride must be one of {STEM_STRIDES}, got {stride!r}")
        kernel = 3 if stride == 1 else stride + 1
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.lif = LIF()
        if pool is None:
            self.pool: nn.Module = nn.Identity()
        elif pool == "max":
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        elif pool == "avg":
            self.pool = nn.AvgPool2d(2, stride=2)
        else:
            raise ValueError(f"pool must be one of {POOLS} or None, got {pool!r}")

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # without autograd: BN and the membrane in the conv's output, max-pooling by views
        h = batch_norm_(self.bn, self.conv(x))
        s, v = self.lif.step(h, v, consume=True)
        if (grad_free() and isinstance(self.pool, nn.MaxPool2d)
                and not (h.shape[-1] % 2 or h.shape[-2] % 2)):
            return max_pool_3s2_(s), v
        return self.pool(s), v

    def forward(self, x: Tensor) -> Tensor:
        s = self.lif(_time_batched(lambda z: self.bn(self.conv(z)), x))
        return _time_batched(self.pool, s)


class SPS(nn.Module):
    """Spiking patch splitting: stem stages, then a relative position embedding
    `x + SN(BN(conv3x3(x)))` (Spikformer's RPE); `[B, P, H, W]` -> tokens `[B, N, D]`."""

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        input_size: tuple[int, int],
        stem_pool: tuple[bool, ...],
        pool: str,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        n = len(stem_pool)
        if n < 1:
            raise ValueError("the stem needs at least one stage")
        chans = [max(1, embed_dim // 2 ** (n - 1 - i)) for i in range(n)]
        self.stages = nn.ModuleList()
        h, w = input_size
        if h % stem_stride or w % stem_stride:
            raise ValueError(
                f"input size {input_size} is not divisible by stem_stride {stem_stride}"
            )
        h, w = h // stem_stride, w // stem_stride
        shapes = []
        c_prev = in_channels
        for i, (c, down) in enumerate(zip(chans, stem_pool, strict=True)):
            shapes.append((c, h, w))
            if down:
                if h % 2 or w % 2:
                    raise ValueError(
                        f"input size {input_size} cannot be halved {sum(stem_pool)} times "
                        f"by the stem (reached {h}x{w})"
                    )
                h, w = h // 2, w // 2
            self.stages.append(StemStage(c_prev, c, pool if down else None,
                                         stem_stride if i == 0 else 1))
            c_prev = c
        self.stage_shapes = shapes  # (C, H, W) at each stage's neurons
        self.grid = (h, w)
        self.embed_dim = embed_dim
        self.rpe = StemStage(embed_dim, embed_dim, None)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """`{"stages": [membrane per stage], "rpe": membrane}`, maps `[B, C, H, W]`."""
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch, *shape, device=device, dtype=dtype)

        return {"stages": [zeros(*shape) for shape in self.stage_shapes],
                "rpe": zeros(self.embed_dim, *self.grid)}

    @staticmethod
    def tokens(x: Tensor) -> Tensor:
        """`[..., D, Gh, Gw]` -> `[..., N, D]` in raster order."""
        return x.flatten(-2).transpose(-1, -2)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        stages = []
        for stage, v in zip(self.stages, state["stages"], strict=True):
            x, v = stage.step(x, v)
            stages.append(v)
        r, rpe = self.rpe.step(x, state["rpe"])
        return self.tokens(x + r), {"stages": stages, "rpe": rpe}

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.tokens(x + self.rpe(x))


class Block(nn.Module):
    """`x = x + Attn(SN(x))`, `x = x + BN(W_2 SN(BN(W_1 SN(x))))`."""

    def __init__(
        self,
        attention: str,
        dim: int,
        heads: int,
        grid: tuple[int, int],
        mlp_ratio: int,
        attention_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self.attn_in = LIF()
        self.attn = create_attention(attention, dim, heads, grid, **attention_kwargs)
        self.mlp_in = LIF()
        self.fc1 = TokenProj(dim, mlp_ratio * dim)
        self.mlp_lif = LIF()
        self.fc2 = TokenProj(mlp_ratio * dim, dim)
        self.dim = dim
        self.hidden = mlp_ratio * dim
        self.num_tokens = grid[0] * grid[1]

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """`{"attn_in", "attn" (the attention's own state), "mlp_in", "mlp_hidden"}`."""
        def zeros(width: int) -> Tensor:
            return torch.zeros(batch, self.num_tokens, width, device=device, dtype=dtype)

        return {"attn_in": zeros(self.dim),
                "attn": self.attn.init_state(batch, device=device, dtype=dtype),
                "mlp_in": zeros(self.dim), "mlp_hidden": zeros(self.hidden)}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        s, v_attn_in = self.attn_in.step(x, state["attn_in"])
        a, attn = self.attn.step(s, state["attn"])
        x = x + a
        s, v_mlp_in = self.mlp_in.step(x, state["mlp_in"])
        h, v_hidden = self.mlp_lif.step(self.fc1(s), state["mlp_hidden"], consume=True)
        return x + self.fc2(h), {"attn_in": v_attn_in, "attn": attn, "mlp_in": v_mlp_in,
                                 "mlp_hidden": v_hidden}

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_in(x))
        h = self.mlp_lif(self.fc1(self.mlp_in(x)))
        return x + self.fc2(h)


class SpikingTransformer(nn.Module):
    """Spiking vision transformer built from a config dict (see `configs.py`).

    `config` holds `input_size`, `in_channels`, `num_classes`, `embed_dim`, `depth`, `heads`,
    `time_steps`, `mlp_ratio`, `stem_pool` (one bool per stem stage: halve after it or not),
    `stem_stride` (stride of the first stem conv: 1, 2, 4 or 8), `pool` ("max" or "avg"),
    `attention` (a registered key) and `attention_kwargs`.
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
        self.sps = SPS(
            cfg["in_channels"], cfg["embed_dim"], self.input_size, tuple(cfg["stem_pool"]),
            cfg["pool"], cfg["stem_stride"],
        )
        self.grid = self.sps.grid
        self.num_tokens = self.grid[0] * self.grid[1]
        self.blocks = nn.ModuleList(
            Block(cfg["attention"], cfg["embed_dim"], cfg["heads"], self.grid, cfg["mlp_ratio"],
                  cfg["attention_kwargs"])
            for _ in range(cfg["depth"])
        )
        self.head = nn.Linear(cfg["embed_dim"], cfg["num_classes"])

    @property
    def causal(self) -> bool:
        """Whether `step` can run (False for mechanisms that need future frames)."""
        return all(b.attn.causal for b in self.blocks)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """Zero state for `batch` streams, `{"stem": ..., "blocks": [...]}`, constant in size."""
        if device is None:
            device = self.head.weight.device
        return {"stem": self.sps.init_state(batch, device=device, dtype=dtype),
                "blocks": [b.init_state(batch, device=device, dtype=dtype) for b in self.blocks]}

    def _check(self, frames: Tensor, ndim: int) -> None:
        want = (self.in_channels, *self.input_size)
        if frames.dim() != ndim or tuple(frames.shape[-3:]) != want:
            lead = "[T, B, " if ndim == 5 else "[B, "
            raise ValueError(
                f"expected frames {lead}P, H, W] with (P, H, W) = {want}, "
                f"got shape {tuple(frames.shape)}"
            )

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """One timestep: `frame[B, P, H, W]` -> `(logits[B, C], new state)`."""
        self._check(frame, 4)
        x, stem = self.sps.step(frame, state["stem"])
        blocks = []
        for block, st in zip(self.blocks, state["blocks"], strict=True):
            x, st = block.step(x, st)
            blocks.append(st)
        return self.head(x.mean(dim=1)), {"stem": stem, "blocks": blocks}

    def forward(self, frames: Tensor) -> Tensor:
        """Whole sequence: `frames[T, B, P, H, W]` -> `logits[T, B, C]`."""
        self._check(frames, 5)
        x = self.sps(frames)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=2))


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
    if cfg["stem_stride"] not in STEM_STRIDES:
        raise ValueError(f"model config stem_stride must be one of {STEM_STRIDES}, "
                         f"got {cfg['stem_stride']}")
    return cfg
