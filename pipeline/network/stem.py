"""The stems: event frames `[B, P, H, W]` to tokens `[B, N, D]`, stepwise or over a sequence.

- `SPS` (Spikformer's spiking patch splitting): conv-BN-LIF(-max-pool) stages, then a relative
  position embedding `x + SN(BN(conv3x3(x)))`; the tokens are spike counts (0, 1 or 2).
- `MSSPS` (the Spike-driven Transformer's MS-SPS, also STAtten's): the same stages except the
  last, which max-pools its real-valued BN output *before* its neuron; that feature `f` plus
  `BN(conv3x3(SN(f)))` (no neuron) gives real-valued tokens.

Stage i of S has `D / 2^(S-1-i)` channels; `stem_pool` marks the stages followed by a 2x
down-sampling (the papers' `pooling_stat`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikestream.pipeline.network.layers import batch_norm_
from spikestream.pipeline.network.neurons import LIF, grad_free, state_donated
from spikestream.pipeline.network.state import State

POOLS = ("max", "avg")
STEM_STRIDES = (1, 2, 4, 8)
#: A donated stem step whose conv output would exceed this many bytes computes it in bands of
#: rows (`StemStage.step`): what the step needs then grows with the band, not the map.
BAND_BYTES = 1 << 18


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
    return _max_pool_cols_3s2(r)


def _max_pool_cols_3s2(r: Tensor) -> Tensor:
    """The column half of `max_pool_3s2_`: columns 2j-1, 2j, 2j+1 of each row."""
    a, b = r[..., 0::2], r[..., 1::2]
    out = torch.maximum(a, b)
    out[..., 1:] = torch.maximum(out[..., 1:], b[..., :-1])
    return out


def stem_shapes(
    embed_dim: int, input_size: tuple[int, int], stem_pool: tuple[bool, ...], stem_stride: int
) -> tuple[list[int], list[tuple[int, int, int]], tuple[int, int]]:
    """Channels per stage, `(C, H, W)` at each stage's conv output, and the token grid."""
    n = len(stem_pool)
    if n < 1:
        raise ValueError("the stem needs at least one stage")
    chans = [max(1, embed_dim // 2 ** (n - 1 - i)) for i in range(n)]
    h, w = input_size
    if h % stem_stride or w % stem_stride:
        raise ValueError(f"input size {input_size} is not divisible by stem_stride {stem_stride}")
    h, w = h // stem_stride, w // stem_stride
    shapes = []
    for c, down in zip(chans, stem_pool, strict=True):
        shapes.append((c, h, w))
        if down:
            if h % 2 or w % 2:
                raise ValueError(f"input size {input_size} cannot be halved {sum(stem_pool)} "
                                 f"times by the stem (reached {h}x{w})")
            h, w = h // 2, w // 2
    return chans, shapes, (h, w)



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
        if self._in_bands(v):
            return self._step_in_bands(x, v)
        # without autograd: BN and the membrane in the conv's output, max-pooling by views
        h = batch_norm_(self.bn, self.conv(x))
        s, v = self.lif.step(h, v, consume=True)
        if (grad_free() and isinstance(self.pool, nn.MaxPool2d)
                and not (h.shape[-1] % 2 or h.shape[-2] % 2)):
            return max_pool_3s2_(s), v
        return self.pool(s), v

    def _in_bands(self, v: Tensor) -> bool:
        """Whether `step` goes by bands of rows: a grad-free step with the state donated, a
        large map on the CPU, no pooling or max-pooling of an even-sized map."""
        if not (grad_free() and state_donated() and v.device.type == "cpu"
                and v.numel() * v.element_size() > BAND_BYTES and v.is_contiguous()):
            return False
        if isinstance(self.pool, nn.MaxPool2d):
            return v.shape[-2] % 2 == 0 and v.shape[-1] % 2 == 0
        return isinstance(self.pool, nn.Identity)

    def _step_in_bands(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """`step` computed a band of output rows at a time, the membrane `v` updated in place:
        the same values (a conv output row depends on its input rows only, and BN, the neuron
        and max-pooling are exact row by row), with temporaries of a band's size. The conv's
        vertical padding is a zero row added to the first and last band's input; max-pooling
        reaches one spike row back into the band before (the maximum of rows pooled by
        columns is the column pooling of their maximum)."""
        stride, k = self.conv.stride[0], self.conv.kernel_size[0]
        batch, chans, rows, cols = v.shape
        per_row = batch * chans * cols * v.element_size()
        band = max(2, BAND_BYTES // per_row // 2 * 2)
        pooled = isinstance(self.pool, nn.MaxPool2d)
        out = v.new_empty(batch, chans, rows // 2, cols // 2) if pooled else v.new_empty(v.shape)
        last = None  # the spike row above the band
        for r0 in range(0, rows, band):
            r1 = min(r0 + band, rows)
            lo, hi = r0 * stride - 1, (r1 - 1) * stride + k - 1  # input rows, padded by one
            piece = x[..., max(lo, 0):min(hi, x.shape[-2]), :]
            if lo < 0 or hi > x.shape[-2]:
                pad_top, pad_bottom = max(0, -lo), max(0, hi - x.shape[-2])
                piece = nn.functional.pad(piece, (0, 0, pad_top, pad_bottom))
            h = nn.functional.conv2d(piece, self.conv.weight, None, stride, (0, 1))
            h = batch_norm_(self.bn, h)
            vb = v[..., r0:r1, :]
            s, vn = self.lif.step(h, vb, consume=True)
            if vn.data_ptr() != vb.data_ptr():
                vb.copy_(vn)
            if not pooled:
                out[..., r0:r1, :] = s
                continue
            o = max_pool_3s2_(s)  # its first row misses the spike row above the band
            if last is not None:
                o[..., :1, :] = torch.maximum(o[..., :1, :], _max_pool_cols_3s2(last))
            out[..., r0 // 2:r1 // 2, :] = o
            last = s[..., -1:, :]
        return out, v

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
        chans, shapes, self.grid = stem_shapes(embed_dim, input_size, stem_pool, stem_stride)
        self.stages = nn.ModuleList(
            StemStage(c_in, c, pool if down else None, stem_stride if i == 0 else 1)
            for i, (c_in, c, down) in enumerate(zip([in_channels, *chans[:-1]], chans, stem_pool,
                                                    strict=True))
        )
        self.stage_shapes = shapes  # (C, H, W) at each stage's neurons
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


class PoolFirstStage(nn.Module):
    """conv3x3 - BN - (max-pool 3/2/1) - LIF: MS-SPS's last stage, which pools the real-valued
    BN output before its neuron. `step` and `forward` return the pooled feature and the spikes."""

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if down else nn.Identity()
        self.lif = LIF()

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = self.pool(batch_norm_(self.bn, self.conv(x)))
        s, v = self.lif.step(f, v)
        return f, s, v

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = _time_batched(lambda z: self.pool(self.bn(self.conv(z))), x)
        return f, self.lif(f)


class ConvBN(nn.Module):
    """conv3x3 - BN without a neuron (MS-SPS's position embedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return batch_norm_(self.bn, self.conv(x))


class MSSPS(nn.Module):
    """MS-SPS (module docstring): `[B, P, H, W]` -> real-valued tokens `[B, N, D]`."""

    def __init__(self, in_channels: int, embed_dim: int, input_size: tuple[int, int],
                 stem_pool: tuple[bool, ...], stem_stride: int = 1) -> None:
        super().__init__()
        if stem_stride != 1:
            raise ValueError("the MS-SPS stem has stride-1 convolutions only")
        chans, shapes, self.grid = stem_shapes(embed_dim, input_size, stem_pool, 1)
        c_in = [in_channels, *chans]
        stages: list[nn.Module] = [StemStage(c_in[i], chans[i], "max" if stem_pool[i] else None)
                                   for i in range(len(chans) - 1)]
        stages.append(PoolFirstStage(c_in[-2], chans[-1], stem_pool[-1]))
        self.stages = nn.ModuleList(stages)
        # (C, H, W) at each stage's neurons: the last one fires after its pooling
        self.stage_shapes = [*shapes[:-1], (embed_dim, *self.grid)]
        self.embed_dim = embed_dim
        self.rpe = ConvBN(embed_dim)

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        """`{"stages": [membrane per stage]}`, maps `[B, C, H, W]`."""
        return {"stages": [torch.zeros(batch, *shape, device=device, dtype=dtype)
                           for shape in self.stage_shapes]}

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        *first, last = self.stages
        vs = []
        for stage, v in zip(first, state["stages"][:-1], strict=True):
            x, v = stage.step(x, v)
            vs.append(v)
        f, s, v = last.step(x, state["stages"][-1])
        return SPS.tokens(f + self.rpe(s)), {"stages": [*vs, v]}

    def forward(self, x: Tensor) -> Tensor:
        *first, last = self.stages
        for stage in first:
            x = stage(x)
        f, s = last(x)
        return SPS.tokens(f + _time_batched(self.rpe, s))
