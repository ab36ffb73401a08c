"""Augmentations of binned spike frames `[T, P, H, W]`: horizontal flip, roll, event drop.

They act on frames rather than events so that cached frames can be augmented afresh on every
access. Event drop on count frames is exact binomial thinning: each of the `n` events in a
pixel-bin survives independently with probability `1 - drop`, which is what dropping events
before binning would give. On binary frames it drops each spike with probability `drop`.
Flip is off by default: it turns a right-hand gesture into a left-hand one and a digit into
a non-digit, so enable it only where the classes are mirror-invariant (e.g. N-Caltech101).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrameAugment:
    """Random flip (probability `flip`), roll by up to `roll` pixels in x and y, event drop."""

    flip: float = 0.0
    roll: int = 0
    drop: float = 0.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0 or not 0.0 <= self.drop < 1.0 or self.roll < 0:
            raise ValueError(f"bad augmentation {self}: flip, drop in [0, 1), roll >= 0")

    @property
    def active(self) -> bool:
        return self.flip > 0 or self.roll > 0 or self.drop > 0

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4:
            raise ValueError(f"frames of shape {tuple(frames.shape)} (expected [T, P, H, W])")
        x = frames
        if self.flip > 0 and float(self._rand(1)) < self.flip:
            x = torch.flip(x, dims=(-1,))
        if self.roll > 0:
            dx, dy = torch.randint(-self.roll, self.roll + 1, (2,), generator=self.generator)
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(-2, -1))
        if self.drop > 0:
            keep = 1.0 - self.drop
            if bool(((x == 0) | (x == 1)).all()):
                x = x * (self._rand(*x.shape) < keep).to(x.dtype)
            else:
                counts = x.clamp(min=0).round()
                probs = torch.full_like(counts, keep)
                x = torch.binomial(counts, probs, generator=self.generator).to(frames.dtype)
        return x

    @classmethod
    def from_spec(cls, spec: str, *, roll: int = 3, drop: float = 0.1,
                  flip: float = 0.5) -> FrameAugment:
        """Build from a comma list such as `"roll,drop"` (`""` or `"none"`: no augmentation)."""
        names = {s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none"}
        unknown = names - {"flip", "roll", "drop"}
        if unknown:
            raise ValueError(f"unknown augmentation {sorted(unknown)} (expected flip, roll, drop)")
        return cls(flip=flip if "flip" in names else 0.0, roll=roll if "roll" in names else 0,
                   drop=drop if "drop" in names else 0.0)
