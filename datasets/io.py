"""One entry point for every event file: format detection, whole reads, streaming, writing.

`read_events(path)` returns a `Recording`; `iter_events(path, chunk_events=...)` (alias
`open_events`) returns an `EventStream`: an iterable of `EVENT_DTYPE` packets of `chunk_events`
events (the last may be shorter) that knows its `sensor_size` before the first packet and is a
context manager. Every packet is checked on the way out: timestamps non-decreasing (also across
packets) and coordinates inside the sensor; any problem, and any error of an underlying library,
becomes an `EventFormatError` naming the file and the byte offset or record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from spikestream.datasets import aedat2, aedat3, aedat4, hdf5, nbin, npy, prophesee
from spikestream.events import (
    EVENT_DTYPE,
    EventFormatError,
    Recording,
    SensorSize,
    validate_events,
)

DEFAULT_CHUNK = 1 << 16


@dataclass(frozen=True)
class FormatInfo:
    """One supported format: how it is recognised and who decodes it."""

    name: str
    extensions: tuple[str, ...]
    magic: str
    decoder: str
    streaming: str


FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        FormatInfo("aedat2", (".aedat", ".aedat2"), "#!AER-DAT2", "own (jAER DAVIS layout)",
                   "chunked reads"),
        FormatInfo("aedat3", (".aedat", ".aedat3"), "#!AER-DAT3.1", "own (cAER spec)",
                   "packet by packet"),
        FormatInfo("aedat4", (".aedat4",), "#!AER-DAT4", "aedat", "packet by packet"),
        FormatInfo("evt2", (".raw",), "% header naming evt 2.0", "expelliarmus", "chunked"),
        FormatInfo("evt3", (".raw",), "% header naming evt 3.0", "expelliarmus", "chunked"),
        FormatInfo("dat", (".dat",), "% header, then type/size bytes", "expelliarmus", "chunked"),
        FormatInfo("nbin", (".bin", ".bs2"), "none (by extension)", "own (vectorised)",
                   "chunked reads"),
        FormatInfo("hdf5", (".h5", ".hdf5"), "\\x89HDF + format attribute", "h5py",
                   "chunked reads"),
        FormatInfo("dsec", (".h5", ".hdf5"), "\\x89HDF + events/{x,y,t,p}", "h5py",
                   "chunked reads"),
        FormatInfo("npy", (".npy",), "\\x93NUMPY", "numpy", "memory-mapped"),
        FormatInfo("npz", (".npz",), "PK\\x03\\x04", "numpy/zipfile", "loaded whole"),
    )
}

Opener = Callable[[Path, int], tuple[SensorSize | None, Iterator[Any], dict[str, Any]]]
_OPENERS: dict[str, Opener] = {
    "aedat2": aedat2.open_source,
    "aedat3": aedat3.open_source,
    "aedat4": aedat4.open_source,
    "evt2": lambda p, c: prophesee.open_source(p, c, "evt2"),
    "evt3": lambda p, c: prophesee.open_source(p, c, "evt3"),
    "dat": lambda p, c: prophesee.open_source(p, c, "dat"),
    "nbin": nbin.open_source,
    "hdf5": hdf5.open_source,
    "dsec": hdf5.open_source,
    "npy": npy.open_source,
    "npz": npy.open_source,
}
# Errors that are about the file system, not the file's content: passed through unchanged.
_PASS = (EventFormatError, FileNotFoundError, IsADirectoryError, PermissionError, MemoryError)


def detect_format(path: str | Path) -> str:
    """The format name (a key of `FORMATS`) by magic bytes / header, else by extension."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!AER-DAT"):
        version = head[9:12]
        for prefix, name in ((b"2.", "aedat2"), (b"3.1", "aedat3"), (b"4.", "aedat4")):
            if version.startswith(prefix):
                return name
        raise EventFormatError(path, f"AEDAT version {version!r}", offset=9,
                               expected="AEDAT 2.0, 3.1 or 4.0")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        f5, _ = hdf5._open(path)
        with f5:
            kind = hdf5.layout_of(f5)
        if kind is None:
            raise EventFormatError(path, "HDF5 file without an events layout",
                                   expected="our /events layout or DSEC's events/{x,y,t,p}")
        return kind
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or (head == b"" and path.suffix.lower() == ".npz"):
        return "npz"
    suffix = path.suffix.lower()
    if head.startswith(b"%"):
        _, lines = prophesee.parse_header(path)
        enc = prophesee.encoding_of(lines, suffix)
        if enc is None:
            raise EventFormatError(path, "Prophesee '%' header names no encoding",
                                   expected="'% evt 2.0' / '% evt 3.0', or pass format=")
        return enc
    if suffix in (".bin", ".bs2"):
        return "nbin"
    if suffix in (".raw", ".dat", ".aedat", ".aedat4", ".h5", ".hdf5", ".npy"):
        raise EventFormatError(path, f"content does not match its {suffix} extension", offset=0,
                               expected=f"the magic bytes of a {suffix} file")
    raise EventFormatError(path, f"unknown format (extension {suffix!r})", offset=0,
                           expected="one of " + ", ".join(sorted(FORMATS)))


class EventStream:
    """Packets of a file as `EVENT_DTYPE` arrays, with `sensor_size`, `format` and `metadata`.

    Iterate it once; use it as a context manager (or call `close()`) to release the file early.
    """

    def __init__(self, path: str | Path, *, format: str | None = None,
                 chunk_events: int = DEFAULT_CHUNK, sensor_size: SensorSize | None = None,
                 _defer_size: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        if chunk_events < 1:
            raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
        self.chunk_events = int(chunk_events)
        self.format = _wrap(self.path, lambda: format or detect_format(self.path))
        if self.format not in _OPENERS:
            raise ValueError(f"unknown format {self.format!r}; one of {sorted(_OPENERS)}")
        size, self._source, self.metadata = _wrap(
            self.path, lambda: _OPENERS[self.format](self.path, self.chunk_events))
        self.metadata = dict(self.metadata)
        if sensor_size is not None:
            size = tuple(int(s) for s in sensor_size)
            if len(size) == 2:
                size = (*size, 2)
        elif size is None and not _defer_size:
            size = self._scan_size()
        # None only inside `read_events`, which sizes the sensor from the events it loaded
        self.sensor_size: SensorSize = size  # type: ignore[assignment]
        self._iterated = False
        self.n_events = 0

    def _scan_size(self) -> SensorSize:
        """A first pass over the file for a format whose header names no sensor size."""
        _, source, _ = _wrap(self.path, lambda: _OPENERS[self.format](self.path, 1 << 20))
        mx = my = -1
        for ev, _ in _guard(self.path, source):
            if len(ev):
                mx, my = max(mx, int(ev["x"].max())), max(my, int(ev["y"].max()))
        return self._size_from_extent(mx, my)

    def _size_from_extent(self, mx: int, my: int) -> SensorSize:
        if self.format == "nbin":
            w, h = nbin.size_from_extent(mx, my)
        else:
            w, h = mx + 1, my + 1
        self.metadata["sensor_size_inferred"] = True
        return (max(w, 1), max(h, 1), 2)

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
        for ev, offs in _guard(self.path, self._source):
            if not len(ev):
                continue
            validate_events(ev, (w, h), source=self.path, first=self.n_events + n_pending,
                            offsets=offs, last_t=last_t)
            last_t = int(ev["t"][-1])
            pending.append(ev)
            n_pending += len(ev)
            while n_pending >= self.chunk_events:
                block = np.concatenate(pending) if len(pending) > 1 else pending[0]
                out, rest = block[: self.chunk_events], block[self.chunk_events:]
                pending, n_pending = ([rest] if len(rest) else []), len(rest)
                self.n_events += len(out)
                yield out
        if n_pending:
            out = np.concatenate(pending)
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
    with EventStream(path, format=format, chunk_events=1 << 22, sensor_size=sensor_size,
                     _defer_size=True) as s:
        packets = list(s)
        events = np.concatenate(packets) if packets else np.zeros(0, dtype=EVENT_DTYPE)
        if s.sensor_size is None:
            s.sensor_size = s._size_from_extent(
                int(events["x"].max()) if len(events) else -1,
                int(events["y"].max()) if len(events) else -1)
        meta = dict(s.metadata, format=s.format, path=str(s.path))
        return Recording(events, s.sensor_size, meta)


def write_events(path: str | Path, recording: Recording) -> None:
    """Write a `Recording` in our HDF5 layout (readable by `read_events`)."""
    hdf5.write_events(path, recording)
