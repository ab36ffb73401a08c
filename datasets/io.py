"""One entry point for every event file: format detection, whole reads, streaming, writing.

`read_events(path)` returns a `Recording`; `iter_events(path, chunk_events=...)` (alias
`open_events`) returns an `EventStream`: an iterable of `EVENT_DTYPE` packets of `chunk_events`
events (the last may be shorter) that knows its `sensor_size` before the first packet and is a
context manager. Every packet is checked on the way out: timestamps non-decreasing (also across
packets) and coordinates inside the sensor (by `validate_events`, or by a source that declares
`check_within(width, height) -> True` and checks its packets in its own decoding pass); any
problem, and any error of an underlying library, becomes an `EventFormatError` naming the file
and the byte offset or record.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from spikestream.datasets.formats import FORMATS, detect_format, get_format, writable_format
from spikestream.datasets.records import join_records
from spikestream.events import (
    EVENT_DTYPE,
    EventFormatError,
    Recording,
    SensorSize,
    check_sensor_size,
    validate_events,
)

DEFAULT_CHUNK = 1 << 16
#: The chunk `read_events` asks readers for: large, so that a file of up to 16 M events is
#: decoded into one array (joining packets costs a copy, slow for a packed record dtype).
READ_CHUNK = 1 << 24


# Errors that are about the file system, not the file's content: passed through unchanged.
_PASS = (EventFormatError, FileNotFoundError, IsADirectoryError, PermissionError, MemoryError)


class EventStream:
    """Packets of a file as `EVENT_DTYPE` arrays, with `sensor_size`, `format` and `metadata`.

    Iterate it once; use it as a context manager (or call `close()`) to release the file early.
    """

    def __init__(self, path: str | Path, *, format: str | None = None,
                 chunk_events: int = DEFAULT_CHUNK, sensor_size: SensorSize | None = None,
                 _defer_size: bool = False, _whole: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        self.chunk_events = int(chunk_events)
        self.format = _wrap(self.path, lambda: format or detect_format(self.path))
        self._opener = get_format(self.format).open
        size, self._source, self.metadata = _wrap(
            self.path, lambda: self._opener(self.path, self.chunk_events))
        self.metadata = dict(self.metadata)
        if sensor_size is not None:
            size = check_sensor_size(sensor_size, source=self.path)
        elif size is not None:
            size = self._checked_size(size)
        elif not _defer_size:
            size = self._scan_size()
        # None only inside `read_events`, which sizes the sensor from the events it loaded
        self.sensor_size: SensorSize = size  # type: ignore[assignment]
        self._iterated = False
        self._whole = _whole  # `read_events`: packets as decoded, never cut or joined here
        self.n_events = 0

    def _scan_size(self) -> SensorSize:
        """A first pass over the file for a format whose header names no sensor size."""
        _, source, _ = _wrap(self.path, lambda: self._opener(self.path, 1 << 20))
        mx = my = -1
        for ev, _ in _guard(self.path, source):
            if len(ev):
                mx, my = max(mx, int(ev["x"].max())), max(my, int(ev["y"].max()))
        return self._size_from_extent(mx, my)

    def _size_from_extent(self, mx: int, my: int) -> SensorSize:
        infer = get_format(self.format).size_from_extent
        w, h = infer(mx, my) if infer is not None else (mx + 1, my + 1)
        self.metadata["sensor_size_inferred"] = True
        return (max(w, 1), max(h, 1), 2)

    def _checked_size(self, size: SensorSize) -> SensorSize:
        """A size the file declares, refused (closing the file) when outside the limits."""
        try:
            return check_sensor_size(size, source=self.path)
        except EventFormatError:
            self.close()
            raise

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterated:
            raise RuntimeError(f"{self.path}: an EventStream can be iterated only once")
        self._iterated = True
        return self._packets()

    def _packets(self) -> Iterator[np.ndarray]:
        w, h = self.sensor_size[:2] if self.sensor_size else (1 << 16, 1 << 16)
        last_t: int | None = None
        pending: list[np.ndarray] = []
        n_pending = 0
        # a source that can check its packets itself, in its decoding pass, is told the bounds
        # and says whether it does
        check_within = getattr(self._source, "check_within", None)
        checked = bool(check_within(w, h)) if check_within is not None else False
        for ev, offs in _guard(self.path, self._source):
            if not len(ev):
                continue
            if not checked:
                validate_events(ev, (w, h), source=self.path, first=self.n_events + n_pending,
                                offsets=offs, last_t=last_t)
                last_t = int(ev["t"][-1])
            if self._whole:
                self.n_events += len(ev)
                yield ev
                continue
            pending.append(ev)
            n_pending += len(ev)
            while n_pending >= self.chunk_events:
                block = join_records(pending)
                out, rest = block[: self.chunk_events], block[self.chunk_events:]
                pending, n_pending = ([rest] if len(rest) else []), len(rest)
                self.n_events += len(out)
                yield out
        if n_pending:
            out = join_records(pending)
            self.n_events += len(out)
            yield out

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["FORMATS", "EventStream", "detect_format", "iter_events", "open_events", "read_events",
           "write_events"]


def _is_decoder_failure(e: BaseException) -> bool:
    """An error of a decoder on bad content (pyo3's PanicException derives from BaseException)."""
    if isinstance(e, _PASS) or isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return False
    return isinstance(e, Exception) or type(e).__name__ == "PanicException"


def _wrap(path: Path, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BaseException as e:
        if not _is_decoder_failure(e):
            raise
        raise EventFormatError(path, f"{type(e).__name__}: {e}") from e


def _guard(path: Path, source: Iterator[Any]) -> Iterator[Any]:
    """Re-raise any library error from a reader's generator as an `EventFormatError`."""
    it = iter(source)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except BaseException as e:
            if not _is_decoder_failure(e):
                raise
            raise EventFormatError(path, f"{type(e).__name__}: {e}") from e
        yield item


def iter_events(path: str | Path, chunk_events: int = DEFAULT_CHUNK, *, format: str | None = None,
                sensor_size: SensorSize | None = None) -> EventStream:
    """Stream a file as packets of `chunk_events` events; `.sensor_size` is known up front."""
    return EventStream(path, format=format, chunk_events=chunk_events, sensor_size=sensor_size)


open_events = iter_events


def read_events(path: str | Path, format: str | None = None, *,
                sensor_size: SensorSize | None = None) -> Recording:
    """Read a whole file into a `Recording` (format by magic bytes / header, else extension)."""
    with EventStream(path, format=format, chunk_events=READ_CHUNK, sensor_size=sensor_size,
                     _defer_size=True, _whole=True) as s:
        packets = list(s)
        events = join_records(packets) if packets else np.zeros(0, dtype=EVENT_DTYPE)
        if s.sensor_size is None:
            s.sensor_size = s._size_from_extent(
                int(events["x"].max()) if len(events) else -1,
                int(events["y"].max()) if len(events) else -1)
        meta = dict(s.metadata, format=s.format, path=str(s.path))
        return Recording(events, s.sensor_size, meta)


def write_events(path: str | Path, recording: Recording, *, format: str | None = None) -> None:
    """Write a `Recording` (format by name, else by extension, else our HDF5 layout).

    The file is written beside `path` under a temporary name and renamed on success, so a failure
    never leaves a partial file nor clobbers an existing one.
    """
    path = Path(path)
    fmt = writable_format(path, format)
    check_sensor_size(recording.sensor_size, source=path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        fmt.write(Path(tmp), recording)  # type: ignore[misc]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
