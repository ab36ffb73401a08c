"""Seeded fault injection for the device emulator: lost, corrupted, duplicated and garbage frames,
stalls and reboots.

Faults act per frame, independently in each direction (host to device and device to host):

- ``drop=P``: the frame vanishes;
- ``flip=P``: one random bit of the frame is inverted;
- ``dup=P``: the frame is delivered twice;
- ``garbage=P``: 1..32 random bytes (a noise burst) precede the frame;
- ``stall=MS``: before handling a received frame the device freezes for MS milliseconds, with
  probability ``stall_p`` (default 0.1);
- ``reset_after=N``: the device reboots after every N-th STEP frame it applies (the answer to that
  frame still goes out; parameters, state and sequence sync are lost; the boot counter goes up).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

_PROB_KEYS = ("drop", "flip", "dup", "garbage", "stall_p")


@dataclass(frozen=True)
class FaultConfig:
    """Fault rates; all zero means a perfect device and line."""

    drop: float = 0.0
    flip: float = 0.0
    dup: float = 0.0
    garbage: float = 0.0
    stall: float = 0.0  # milliseconds
    stall_p: float = 0.1
    reset_after: int = 0  # 0: never

    def __post_init__(self) -> None:
        for key in _PROB_KEYS:
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"fault {key}={v}: a probability must lie in [0, 1]")
        if self.stall < 0:
            raise ValueError(f"fault stall={self.stall}: milliseconds must be >= 0")
        if self.reset_after < 0:
            raise ValueError(f"fault reset_after={self.reset_after}: must be >= 0")

    @classmethod
    def parse(cls, spec: str | None) -> FaultConfig:
        """Parse ``"drop=0.1,flip=0.05,stall=20,reset_after=7"`` (empty or None: no faults)."""
        if not spec:
            return cls()
        names = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise ValueError(
                    f"fault spec {spec!r}: bad item {item!r}; expected KEY=VALUE with KEY in "
                    f"{', '.join(names)}"
                )
            try:
                values[key] = int(raw) if key == "reset_after" else float(raw)
            except ValueError:
                raise ValueError(
                    f"fault spec {spec!r}: {key} value {raw!r} is not a number"
                ) from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def any(self) -> bool:
        return bool(
            self.drop or self.flip or self.dup or self.garbage or self.stall or self.reset_after
        )

    def spec(self) -> str:
        """The inverse of parse (only the non-default entries)."""
        default = FaultConfig()
        return ",".join(
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        )


@dataclass
class FaultCounts:
    """How many faults were injected."""

    dropped: int = 0
    flipped: int = 0
    duplicated: int = 0
    garbage: int = 0
    stalls: int = 0
    resets: int = 0


class FaultInjector:
    """Applies a FaultConfig to frames with a seeded generator (one per direction)."""

    def __init__(self, config: FaultConfig, seed: int = 0) -> None:
        self.config = config
        self.rng_in = np.random.default_rng([seed, 0])
        self.rng_out = np.random.default_rng([seed, 1])
        self.counts = FaultCounts()

    def apply(self, frame: bytes, inbound: bool) -> list[bytes]:
        """The byte strings that reach the receiver in place of `frame` (delimiters included)."""
        c = self.config
        rng = self.rng_in if inbound else self.rng_out
        if not (c.drop or c.flip or c.dup or c.garbage):
            return [frame]
        if c.drop and rng.random() < c.drop:
            self.counts.dropped += 1
            return []
        if c.flip and rng.random() < c.flip:
            buf = bytearray(frame)
            bit = int(rng.integers(0, 8 * len(buf)))
            buf[bit // 8] ^= 1 << (bit % 8)
            frame = bytes(buf)
            self.counts.flipped += 1
        out = [frame]
        if c.garbage and rng.random() < c.garbage:
            noise = rng.integers(0, 256, size=int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
            out.insert(0, noise)
            self.counts.garbage += 1
        if c.dup and rng.random() < c.dup:
            out.append(frame)
            self.counts.duplicated += 1
        return out

    def stall_seconds(self) -> float:
        """Seconds to freeze before handling the next frame (0 most of the time)."""
        c = self.config
        if c.stall and self.rng_in.random() < c.stall_p:
            self.counts.stalls += 1
            return c.stall / 1000.0
        return 0.0
