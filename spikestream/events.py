"""The event contract: one structured dtype, a `Recording`, validation and the format error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The one event dtype used everywhere (field names as Tonic uses them; t in microseconds).
EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

SensorSize = tuple[int, int, int]  # (W, H, P) as in Tonic


class EventFormatError(ValueError):
    """Bad input in an event file or stream: names the source, where, and what was expected."""

    def __init__(
        self,
        source: Any,
        message: str,
        *,
        offset: int | None = None,
        record: int | None = None,
        expected: str | None = None,
    ) -> None:
        self.source = str(source)
        self.offset = offset
        self.record = record
        self.expected = expected
        where = []
        if offset is not None:
            where.append(f"byte offset {offset}")
        if record is not None:
            where.append(f"record {record}")
        text = f"{self.source}"
        if where:
            text += f" at {', '.join(where)}"
        text += f": {message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


def empty_events(n: int = 0) -> np.ndarray:
    """A zeroed event array of length `n`."""
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(x: Any, y: Any, t: Any, p: Any) -> np.ndarray:
    """Pack four equal-length columns into an `EVENT_DTYPE` array (polarity mapped to 0/1)."""
    x, y, t, p = (np.asarray(a) for a in (x, y, t, p))
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"columns differ in length: x={len(x)} y={len(y)} t={n} p={len(p)}")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = x
    ev["y"] = y
    ev["t"] = t
    ev["p"] = p > 0
    return ev


def as_events(events: np.ndarray) -> np.ndarray:
    """Return `events` as an `EVENT_DTYPE` array, converting field types (not names) if needed."""
    if events.dtype == EVENT_DTYPE:
        return events
    names = events.dtype.names or ()
    missing = {"x", "y", "t", "p"} - set(names)
    if missing:
        raise ValueError(f"event array lacks fields {sorted(missing)}; has {names}")
    return make_events(events["x"], events["y"], events["t"], events["p"])


def validate_events(
    events: np.ndarray, sensor_size: SensorSize, *, source: Any = "<events>"
) -> None:
    """Raise `EventFormatError` unless events are time-ordered and inside the sensor."""
    if events.dtype != EVENT_DTYPE:
        raise EventFormatError(source, f"dtype {events.dtype}", expected=str(EVENT_DTYPE))
    if len(events) == 0:
        return
    w, h = int(sensor_size[0]), int(sensor_size[1])
    t = events["t"]
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise EventFormatError(
            source,
            f"timestamp {int(t[i])} µs goes back from {int(t[i - 1])} µs",
            record=i,
            expected="non-decreasing timestamps",
        )
    bad = np.flatnonzero((events["x"] >= w) | (events["y"] >= h) | (events["p"] > 1))
    if bad.size:
        i = int(bad[0])
        e = events[i]
        raise EventFormatError(
            source,
            f"event (x={e['x']}, y={e['y']}, p={e['p']}) outside the sensor",
            record=i,
            expected=f"x < {w}, y < {h}, p in {{0, 1}}",
        )


@dataclass
class Recording:
    """Events with the sensor size `(W, H, P)` they were recorded on, and metadata."""

    events: np.ndarray
    sensor_size: SensorSize
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = as_events(self.events)
        self.sensor_size = tuple(int(s) for s in self.sensor_size)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.events)

    @property
    def width(self) -> int:
        return self.sensor_size[0]

    @property
    def height(self) -> int:
        return self.sensor_size[1]

    @property
    def t_start_us(self) -> int | None:
        return int(self.events["t"][0]) if len(self.events) else None

    @property
    def t_end_us(self) -> int | None:
        return int(self.events["t"][-1]) if len(self.events) else None

    def validate(self, source: Any = "<recording>") -> Recording:
        validate_events(self.events, self.sensor_size, source=source)
        return self
