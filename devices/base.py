"""The `EventSource` interface every source implements, its counters, and real-time pacing."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from spikestream import SensorSize, empty_events
from spikestream.events import validate_events


@dataclass
class SourceCounters:
    """What a source has delivered and what it has refused.

    `events`/`packets`: delivered to the consumer. `drops`: input units known to be lost before
    they reached the source (e.g. datagrams missing from a sequence). `malformed`: input units
    the source rejected (each with a reason in `reasons`); `rejected_events`: events they held,
    where that is known.
    """

    events: int = 0
    packets: int = 0
    drops: int = 0
    malformed: int = 0
    rejected_events: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, events: int = 0) -> None:
        """Count one malformed input unit with its reason."""
        self.malformed += 1
        self.rejected_events += int(events)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pacer:
    """Maps stream time to wall time: `wait(t_us)` sleeps until `t_us` is due.

    `speed=1.0` is real time, `2.0` twice as fast, `None` as fast as possible (never sleeps).
    The clock starts at the first timestamp it is given.
    """

    def __init__(self, speed: float | None = 1.0) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None, got {speed}")
        self.speed = speed
        self._t0_us: int | None = None
        self._wall0 = 0.0

    def reset(self) -> None:
        self._t0_us = None

    def wait(self, t_us: int) -> float:
        """Sleep until stream time `t_us` is due; return how late (s) it was, 0 if on time."""
        if self.speed is None:
            return 0.0
        now = time.perf_counter()
        if self._t0_us is None:
            self._t0_us, self._wall0 = int(t_us), now
            return 0.0
        due = self._wall0 + (int(t_us) - self._t0_us) * 1e-6 / self.speed
        if due > now:
            time.sleep(due - now)
            return 0.0
        return now - due


class EventSource(ABC):
    """A context manager that yields time-ordered event packets from one sensor.

    Iterate over it (inside `with`, or directly: iteration opens and closes it) to get
    `EVENT_DTYPE` arrays; packets may be empty (a live source yields an empty packet when
    nothing arrived within its poll interval, so a consumer can keep its own clock).
    Every packet is checked against the contract (dtype, sensor bounds, time order within and
    across packets) before it is handed out; `counters` says what was delivered and refused.
    """

    def __init__(self, sensor_size: SensorSize) -> None:
        w, h = int(sensor_size[0]), int(sensor_size[1])
        p = int(sensor_size[2]) if len(sensor_size) > 2 else 2
        if w <= 0 or h <= 0 or w > 65535 or h > 65535:
            raise ValueError(f"sensor size {tuple(sensor_size)} outside 1..65535 pixels")
        self.sensor_size: SensorSize = (w, h, p)
        self.counters = SourceCounters()
        self._is_open = False
        self._last_t: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> EventSource:
        """Acquire what the source needs (sockets, devices); idempotent."""
        if not self._is_open:
            self._last_t = None
            self._open()
            self._is_open = True
        return self

    def close(self) -> None:
        """Release the source; idempotent."""
        if self._is_open:
            self._is_open = False
            self._close()

    @property
    def is_open(self) -> bool:
        return self._is_open

    def __enter__(self) -> EventSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:  # noqa: B027 - optional hook
        """Subclass hook: acquire resources."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Subclass hook: release resources."""

    # -- packets -----------------------------------------------------------------------------
    @abstractmethod
    def _packets(self) -> Iterator[np.ndarray]:
        """Yield raw packets (EVENT_DTYPE); the base class checks and counts them."""

    def __iter__(self) -> Iterator[np.ndarray]:
        opened_here = not self._is_open
        self.open()
        try:
            for packet in self._packets():
                self._check(packet)
                self.counters.packets += 1
                self.counters.events += len(packet)
                yield packet
        finally:
            if opened_here:
                self.close()

    def events(self) -> np.ndarray:
        """Everything the source yields until it ends, as one array (finite sources only)."""
        parts = [p for p in self if len(p)]
        return np.concatenate(parts) if parts else empty_events()

    def _check(self, packet: np.ndarray) -> None:
        validate_events(packet, self.sensor_size, source=type(self).__name__, last_t=self._last_t)
        if len(packet):
            self._last_t = int(packet["t"][-1])


#: Windows cut per search when a buffer closes many at once (bounds the work per step).
_WINDOWS_PER_SEARCH = 4096


def count_packets(chunks: Iterable[np.ndarray], n: int) -> Iterator[tuple[int, np.ndarray]]:
    """Re-cut time-ordered, non-empty chunks into packets of `n` events (the last may hold
    fewer); yield `(last event's time, packet)`."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held < n:
            continue
        buf = np.concatenate(pending)
        stop = (len(buf) // n) * n
        for i in range(0, stop, n):
            part = buf[i : i + n]
            yield int(part["t"][-1]), part
        pending, held = [buf[stop:]], len(buf) - stop
    if held:
        buf = np.concatenate(pending)
        yield int(buf["t"][-1]), buf


def time_windows(
    chunks: Iterable[np.ndarray], width: int, t_start: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Re-cut time-ordered, non-empty chunks into consecutive windows
    `[t_start + k*width, + width)` (`t_start`: the first event's time by default); yield
    `(window end, packet)`, empty windows included, up to the window of the last event.

    Lazy: memory is one chunk plus one window's events, and windows are cut a bounded batch at
    a time, so a long gap costs time in proportion to its windows, never memory.
    """
    pending: list[np.ndarray] = []
    window_end: int | None = None if t_start is None else int(t_start) + width
    for chunk in chunks:
        if window_end is None:
            window_end = int(chunk["t"][0]) + width
        pending.append(chunk)
        last_t = int(chunk["t"][-1])
        if last_t < window_end:
            continue
        buf = np.concatenate(pending)
        t = np.ascontiguousarray(buf["t"])  # one copy of the strided field per buffer
        start = 0
        while window_end <= last_t:
            k = min((last_t - window_end) // width + 1, _WINDOWS_PER_SEARCH)
            ends = window_end + width * np.arange(k, dtype=np.int64)
            for end, stop in zip(ends.tolist(), np.searchsorted(t, ends).tolist(), strict=True):
                yield end, buf[start:stop]
                start = stop
            window_end = int(ends[-1]) + width
        pending = [buf[start:]]
    if window_end is not None and pending:
        buf = np.concatenate(pending)
        if len(buf):
            yield window_end, buf


def split_packets(
    events: np.ndarray,
    *,
    packet_us: int | None = None,
    packet_events: int | None = None,
    t_start: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Cut time-ordered events into packets; yield `(t_end_us, packet)`.

    With `packet_us`, packets cover consecutive windows `[t_start + k*packet_us, + packet_us)`
    (empty windows give empty packets, so a paced consumer sees time pass); `t_end_us` is the
    window's end. With `packet_events`, packets hold that many events; `t_end_us` is the last
    event's time.
    """
    if (packet_us is None) == (packet_events is None):
        raise ValueError("give exactly one of packet_us and packet_events")
    chunks = [events] if len(events) else []
    if packet_events is not None:
        if packet_events <= 0:
            raise ValueError(f"packet_events must be > 0, got {packet_events}")
        yield from count_packets(chunks, packet_events)
        return
    assert packet_us is not None
    if packet_us <= 0:
        raise ValueError(f"packet_us must be > 0, got {packet_us}")
    yield from time_windows(chunks, packet_us, t_start)
