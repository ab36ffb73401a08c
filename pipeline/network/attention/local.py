"""The localized receptive field shared by `lrf_ssa` and `lrf_dyn`.

`LocalRF` sums depthwise 3x3 convolutions with several dilations over the token grid: every
token mixes with its spatial neighbours at distances 1, 3 and 5 (by default). It is stateless:
each timestep is convolved on its own, so `step` and time-batched use agree trivially.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class LocalRF(nn.Module):
    """`sum_d DWConv3x3_d(v)` on the `(Gh, Gw)` token grid; `v[..., N, D] -> [..., N, D]`.

    Leading axes (batch, or time x batch) are flattened into one batch, so the module can be
    applied per timestep (`[B, N, D]`) or to a whole sequence at once (`[T, B, N, D]`).
    """

    def __init__(self, dim: int, grid: tuple[int, int], dilations: Sequence[int] = (1, 3, 5)):
        super().__init__()
        if not dilations:
            raise ValueError("LocalRF needs at least one dilation")
        self.dim = int(dim)
        self.grid = (int(grid[0]), int(grid[1]))
        self.dilations = tuple(int(d) for d in dilations)
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, 3, padding=d, dilation=d, groups=dim, bias=False)
            for d in self.dilations
        )

    def forward(self, v: Tensor) -> Tensor:
        gh, gw = self.grid
        *lead, n, d = v.shape
        if n != gh * gw or d != self.dim:
            raise ValueError(
                f"LocalRF expects [..., {gh * gw}, {self.dim}] tokens on a {gh}x{gw} grid, "
                f"got {tuple(v.shape)}"
            )
        img = v.reshape(-1, gh, gw, d).permute(0, 3, 1, 2)
        out = sum(conv(img) for conv in self.convs)
        return out.permute(0, 2, 3, 1).reshape(*lead, n, d)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid={self.grid}, dilations={self.dilations}"
