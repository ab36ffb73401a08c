"""`ReplayCamera`: a recording played back as a live stream, at real time or any speed."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, nullcontext
from typing import Any

import numpy as np

from spikestream import Recording, SensorSize, as_events

from .base import EventSource, Pacer, count_packets, time_windows

#: Default longest gap between consecutive events that is replayed as it is (10 s).
DEFAULT_MAX_GAP_US = 10_000_000

Packets = Iterable[np.ndarray]


class ReplayCamera(EventSource):
    """Plays a `Recording`, an event array, or a stream of event packets as a live source.

    `recording` may be a `Recording`, an event array, an iterable of packets (a file reader's
    chunks: replayed once unless it can be iterated again), or a function returning such an
    iterable (called on each replay, so a file is streamed, never read whole; what it returns is
    closed after the replay when it has `close`). `sensor_size` is taken from a `Recording`, or
    from the packets' `sensor_size` attribute (as `iter_events` gives), else it must be given.

    Packets are cut by duration (`packet_us`, windows aligned to the first event; windows
    without events give empty packets, so a paced consumer sees time pass) or by count
    (`packet_events`); the default is 5 ms windows. `speed=1.0` paces each packet at the
    moment its window closes in the recording's time, `speed=2.0` twice as fast, `speed=None`
    as fast as the consumer takes them. Timestamps are those of the recording, except after a
    gap between consecutive events longer than `max_gap_us`: that gap is shortened to
    `max_gap_us` (later timestamps move back by the excess, with a warning; `skipped_gaps`
    lists `(t_before, t_after)` of each), so no gap costs more than `max_gap_us / packet_us`
    empty packets nor a longer wait. `max_gap_us=None` replays every gap as it is.
    Memory is bounded by the largest chunk of the source plus one window's events.
    """

    def __init__(
        self,
        recording: Recording | np.ndarray | Packets | Callable[[], Packets],
        sensor_size: SensorSize | None = None,
        *,
        speed: float | None = 1.0,
        packet_us: int | None = None,
        packet_events: int | None = None,
        max_gap_us: int | None = DEFAULT_MAX_GAP_US,
    ) -> None:
        self._first: Packets | None = None  # a factory's first stream, opened to learn its size
        self.metadata: dict[str, Any] = {}
        if isinstance(recording, Recording):
            sensor_size = sensor_size or recording.sensor_size
            self._factory: Callable[[], Packets] = lambda: (recording.events,)
            self.metadata = dict(recording.metadata)
        elif isinstance(recording, np.ndarray):
            self._factory = lambda: (recording,)
        else:
            if callable(recording):
                self._factory = recording
                self._first = probe = recording()
            else:
                self._factory = lambda: recording  # type: ignore[return-value]
                probe = recording
            sensor_size = sensor_size or getattr(probe, "sensor_size", None)
            self.metadata = dict(getattr(probe, "metadata", None) or {})
        if sensor_size is None:
            raise ValueError("sensor_size is needed when replaying packets or an event array")
        super().__init__(sensor_size)
        if packet_us is not None and packet_events is not None:
            raise ValueError("give packet_us or packet_events, not both")
        if packet_us is None and packet_events is None:
            packet_us = 5000
        if packet_us is not None and packet_us <= 0:
            raise ValueError(f"packet_us must be > 0, got {packet_us}")
        if packet_events is not None and packet_events <= 0:
            raise ValueError(f"packet_events must be > 0, got {packet_events}")
        if max_gap_us is not None and max_gap_us < 0:
            raise ValueError(f"max_gap_us must be >= 0 or None, got {max_gap_us}")
        self.packet_us = packet_us
        self.packet_events = packet_events
        self.max_gap_us = max_gap_us
        self.skipped_gaps: list[tuple[int, int]] = []
        self.pacer = Pacer(speed)

    @property
    def speed(self) -> float | None:
        return self.pacer.speed

    def _take_source(self) -> Packets:
        if self._first is not None:
            source, self._first = self._first, None
            return source
        return self._factory()

    def _packets(self) -> Iterator[np.ndarray]:
        self.pacer.reset()
        source = self._take_source()
        owner = closing(source) if hasattr(source, "close") else nullcontext()
        with owner:  # type: ignore[attr-defined]
            chunks = self._chunks(source)
            if self.packet_events is not None:
                cut = count_packets(chunks, self.packet_events)
            else:
                cut = time_windows(chunks, self.packet_us)  # type: ignore[arg-type]
            for t_due, packet in cut:
                self.pacer.wait(t_due)
                yield packet

    def _chunks(self, source: Packets) -> Iterator[np.ndarray]:
        """Non-empty chunks of the source, with gaps longer than `max_gap_us` shortened."""
        last_t: int | None = None  # the previous event's recorded time
        shift = 0  # µs taken off every later timestamp
        for chunk in source:
            chunk = as_events(np.asarray(chunk))
            if not len(chunk):
                continue
            t = chunk["t"]
            if self.max_gap_us is not None:
                d = np.diff(t, prepend=t[0] if last_t is None else last_t)
                far = np.flatnonzero(d > self.max_gap_us)
                if far.size:
                    excess = np.zeros(len(t), np.int64)
                    excess[far] = d[far] - self.max_gap_us
                    for i in far.tolist():
                        before = int(t[i - 1]) if i else int(last_t)  # type: ignore[arg-type]
                        self._warn_gap(before, int(t[i]))
                    chunk = chunk.copy()
                    chunk["t"] -= np.cumsum(excess) + shift
                    shift += int(excess.sum())
                elif shift:
                    chunk = chunk.copy()
                    chunk["t"] -= shift
            last_t = int(t[-1])
            yield chunk

    def _warn_gap(self, before: int, after: int) -> None:
        self.skipped_gaps.append((before, after))
        warnings.warn(
            f"{type(self).__name__}: a gap of {after - before} µs (from {before} to {after} µs) "
            f"is longer than max_gap_us={self.max_gap_us}; later timestamps move back by "
            f"{after - before - self.max_gap_us} µs",  # type: ignore[operator]
            RuntimeWarning, stacklevel=4)
