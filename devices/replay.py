"""`ReplayCamera`: a recording played back as a live stream, at real time or any speed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from spikestream import Recording, SensorSize, as_events

from .base import EventSource, Pacer


class ReplayCamera(EventSource):
    """Plays a `Recording`, an event array, or an iterable of event packets as a live source.

    Packets are cut by duration (`packet_us`, windows aligned to the first event; windows
    without events give empty packets, so a paced consumer sees time pass) or by count
    (`packet_events`); the default is 5 ms windows. `speed=1.0` paces each packet at the
    moment its window closes in the recording's time, `speed=2.0` twice as fast, `speed=None`
    as fast as the consumer takes them. Timestamps are those of the recording.

    An iterable of packets (e.g. a file reader's chunks) is read lazily; it can be replayed
    once unless it can be iterated again. `sensor_size` is needed unless a `Recording` is given.
    """

    def __init__(
        self,
        recording: Recording | np.ndarray | Iterable[np.ndarray],
        sensor_size: SensorSize | None = None,
        *,
        speed: float | None = 1.0,
        packet_us: int | None = None,
        packet_events: int | None = None,
    ) -> None:
        if isinstance(recording, Recording):
            size = sensor_size or recording.sensor_size
            self._source: Iterable[np.ndarray] = (recording.events,)
            self.metadata = dict(recording.metadata)
        else:
            if sensor_size is None:
                raise ValueError("sensor_size is needed when replaying packets or an event array")
            size = sensor_size
            is_array = isinstance(recording, np.ndarray)
            self._source = (recording,) if is_array else recording  # type: ignore[assignment]
            self.metadata = {}
        super().__init__(size)
        if packet_us is not None and packet_events is not None:
            raise ValueError("give packet_us or packet_events, not both")
        if packet_us is None and packet_events is None:
            packet_us = 5000
        if packet_us is not None and packet_us <= 0:
            raise ValueError(f"packet_us must be > 0, got {packet_us}")
        if packet_events is not None and packet_events <= 0:
            raise ValueError(f"packet_events must be > 0, got {packet_events}")
        self.packet_us = packet_us
        self.packet_events = packet_events
        self.pacer = Pacer(speed)

    @property
    def speed(self) -> float | None:
        return self.pacer.speed

    def _packets(self) -> Iterator[np.ndarray]:
        self.pacer.reset()
        cut = self._by_count() if self.packet_events is not None else self._by_time()
        for t_due, packet in cut:
            self.pacer.wait(t_due)
            yield packet

    def _chunks(self) -> Iterator[np.ndarray]:
        for chunk in self._source:
            chunk = as_events(np.asarray(chunk))
            if len(chunk):
                yield chunk

    def _by_count(self) -> Iterator[tuple[int, np.ndarray]]:
        n = int(self.packet_events)  # type: ignore[arg-type]
        pending: list[np.ndarray] = []
        held = 0
        for chunk in self._chunks():
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

    def _by_time(self) -> Iterator[tuple[int, np.ndarray]]:
        width = int(self.packet_us)  # type: ignore[arg-type]
        pending: list[np.ndarray] = []
        window_end: int | None = None
        for chunk in self._chunks():
            if window_end is None:
                window_end = int(chunk["t"][0]) + width
            pending.append(chunk)
            last_t = int(chunk["t"][-1])
            if last_t < window_end:
                continue
            buf = np.concatenate(pending)
            # every window that ends at or before the newest event is complete; one search for
            # all of them (numpy copies a strided field on each `searchsorted` call, so a call
            # per window would cost a copy of the whole buffer each)
            ends = window_end + width * np.arange((last_t - window_end) // width + 1)
            start = 0
            for end, stop in zip(ends.tolist(), np.searchsorted(buf["t"], ends).tolist(),
                                 strict=True):
                yield end, buf[start:stop]
                start = stop
            window_end = int(ends[-1]) + width
            pending = [buf[start:]]
        if window_end is not None and pending:
            buf = np.concatenate(pending)
            if len(buf):
                yield window_end, buf
