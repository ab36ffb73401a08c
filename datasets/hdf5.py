"""HDF5 event files via h5py: our own layout, DSEC's layout, and the `Recorder`.

Our layout: one chunked, gzip-compressed, resizable compound dataset `/events` of `EVENT_DTYPE`,
a one-element int64 dataset `/n_committed` (events written up to the last flush), and root
attributes `format = "spikestream-events"`, `version`, `sensor_size` (W, H, P) and `metadata`
(JSON). The `Recorder` writes in HDF5 SWMR mode and updates `/n_committed` after the events at
every flush, so a file whose writer was killed reads back every event up to its last flush.

DSEC (`events/{x,y,t,p}`, `t_offset`, `ms_to_idx`): t is µs relative to `t_offset`; we return
absolute µs (`t + t_offset`) and check `ms_to_idx` against the timestamps. The sensor is 640x480.
DSEC's own files are Blosc-compressed and need the `hdf5plugin` package to decompress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.npy import MAX_INFLATE
from spikestream.events import (
    EVENT_DTYPE,
    MAX_TIME_US,
    EventFormatError,
    Recording,
    SensorSize,
    as_events,
    check_sensor_size,
    checked_events,
    validate_events,
)

LAYOUT = "spikestream-events"
VERSION = 1
CHUNK = 1 << 16
DSEC_SIZE = (640, 480, 2)


if TYPE_CHECKING:
    import h5py


def _h5py() -> Any:
    """h5py, imported on first use (0.07-0.2 s): `info` on a non-HDF5 file never loads it;
    with it hdf5plugin, when installed, which registers the Blosc filter of DSEC's files."""
    import h5py

    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        _BLOSC[0] = False
    return h5py


_BLOSC = [True]  # False once hdf5plugin was found missing


def _open(path: Path) -> tuple[h5py.File, bool]:
    """Open for reading; a file left open by a killed SWMR writer opens in SWMR-read mode."""
    try:
        return _h5py().File(path, "r"), False
    except OSError as e:
        if "already open for write" not in str(e):
            raise EventFormatError(path, f"not a readable HDF5 file: {e}",
                                   expected="an HDF5 file") from e
    try:
        return _h5py().File(path, "r", swmr=True), True
    except OSError as e:
        raise EventFormatError(path, f"HDF5 file left open and unreadable: {e}",
                               expected="an HDF5 file") from e


#: Bytes any dataset may declare beyond `MAX_INFLATE` times the bytes it stores.
DECLARED_SLACK = 1 << 20


def check_stored(path: Path, ds: h5py.Dataset) -> None:
    """Refuse a dataset that declares far more than it stores (HDF5 allocates chunks lazily, so
    a 10^10-element dataset can take a few bytes of file): work and memory follow the bytes
    present. Compressed data may declare up to `MAX_INFLATE` times what it stores."""
    declared = int(ds.size) * ds.dtype.itemsize
    stored = int(ds.id.get_storage_size())
    if declared > MAX_INFLATE * stored + DECLARED_SLACK:
        raise EventFormatError(path, f"dataset {ds.name} declares {ds.shape} ({declared} bytes) "
                               f"but stores {stored} bytes",
                               expected=f"at most {MAX_INFLATE}x the bytes stored")


def layout_of(f: h5py.File) -> str | None:
    """'hdf5' for our layout, 'dsec' for DSEC's, None otherwise."""
    if f.attrs.get("format") == LAYOUT and "events" in f:
        return "hdf5"
    if isinstance(f.get("events"), _h5py().Group) and {"x", "y", "t", "p"} <= set(f["events"]):
        return "dsec"
    return None


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size, packets and metadata of our layout or DSEC's."""
    f, recovered = _open(path)
    try:
        kind = layout_of(f)
        if kind == "hdf5":
            return _ours(path, f, chunk_events, recovered)
        if kind == "dsec":
            return _dsec(path, f, chunk_events)
        raise EventFormatError(path, f"HDF5 layout with keys {sorted(f)}",
                               expected="our /events layout or DSEC's events/{x,y,t,p}")
    except BaseException:
        f.close()
        raise


def _ours(path: Path, f: h5py.File, chunk: int, recovered: bool) -> tuple[Any, Any, Any]:
    ds = f["events"]
    if ds.dtype != EVENT_DTYPE or ds.ndim != 1:
        raise EventFormatError(path, f"/events dtype {ds.dtype}, shape {ds.shape}",
                               expected=f"1-D {EVENT_DTYPE}")
    size = check_sensor_size(np.asarray(f.attrs.get("sensor_size", ())).ravel(), source=path)
    check_stored(path, ds)
    n_stored = ds.shape[0]
    n = int(f["n_committed"][0]) if "n_committed" in f else n_stored
    if not 0 <= n <= n_stored:
        raise EventFormatError(path, f"n_committed={n} but /events holds {n_stored}",
                               expected="0 <= n_committed <= len(/events)")
    try:
        meta = json.loads(f.attrs.get("metadata", "{}"))
    except (TypeError, ValueError) as e:
        raise EventFormatError(path, f"metadata attribute: {e}", expected="JSON text") from e
    if not isinstance(meta, dict):
        meta = {"metadata": meta}
    if recovered:
        meta["recovered_after_crash"] = True

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        with f:
            for i in range(0, n, chunk):
                ev = ds[i:min(i + chunk, n)]
                neg = np.flatnonzero(ev["t"] < 0)
                if neg.size:
                    raise EventFormatError(path, f"t={int(ev['t'][neg[0]])}",
                                           record=i + int(neg[0]), expected="t >= 0 µs")
                yield ev, None

    return size, packets(), meta


def _dsec(path: Path, f: h5py.File, chunk: int) -> tuple[Any, Any, Any]:
    g = f["events"]
    cols = [g[k] for k in ("x", "y", "t", "p")]
    n = cols[2].shape[0]
    if any(c.ndim != 1 or c.shape[0] != n for c in cols):
        shapes = {k: g[k].shape for k in ("x", "y", "t", "p")}
        raise EventFormatError(path, f"events/{{x,y,t,p}} shapes {shapes}",
                               expected="four 1-D datasets of equal length")
    for c in cols:
        check_stored(path, c)
    t_offset = _dsec_t_offset(path, f)
    ms_to_idx = None
    if "ms_to_idx" in f:
        if not isinstance(f["ms_to_idx"], _h5py().Dataset) or f["ms_to_idx"].ndim != 1:
            raise EventFormatError(path, "ms_to_idx is not a 1-D dataset",
                                   expected="the DSEC ms_to_idx convention")
        check_stored(path, f["ms_to_idx"])
        ms_to_idx = np.asarray(f["ms_to_idx"][()], dtype=np.int64)
    if ms_to_idx is not None and len(ms_to_idx) and (
        (np.diff(ms_to_idx) < 0).any() or ms_to_idx[0] < 0 or ms_to_idx[-1] > n
    ):
        raise EventFormatError(path, "ms_to_idx is not a non-decreasing index into events",
                               expected=f"0 <= ms_to_idx <= {n}, non-decreasing")

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        with f:
            for i in range(0, n, chunk):
                sl = slice(i, min(i + chunk, n))
                try:
                    x, y, t, p = (c[sl] for c in cols)
                except OSError as e:
                    hint = "" if _BLOSC[0] else "; install hdf5plugin for Blosc"
                    raise EventFormatError(path, f"cannot read events/ ({e}){hint}", record=i,
                                           expected="readable DSEC datasets") from e
                ev = checked_events(x, y, t, p, source=path, first=i, t_offset=t_offset)
                if ms_to_idx is not None:
                    _check_ms_to_idx(path, ms_to_idx, ev["t"] - t_offset, i)
                yield ev, None

    meta = {"t_offset_us": t_offset, "ms_to_idx_len": None if ms_to_idx is None else len(ms_to_idx)}
    return DSEC_SIZE, packets(), meta


def _dsec_t_offset(path: Path, f: h5py.File) -> int:
    """DSEC's `t_offset` (µs), an integer scalar in 0..2^63-1 (0 when absent)."""
    if "t_offset" not in f:
        return 0
    if not isinstance(f["t_offset"], _h5py().Dataset) or f["t_offset"].size != 1:
        raise EventFormatError(path, "t_offset is not one value", expected="one integer (µs)")
    raw = np.asarray(f["t_offset"][()]).ravel()
    if raw.size != 1 or raw.dtype.kind not in "iu":
        raise EventFormatError(path, f"t_offset {raw.dtype} of shape {raw.shape}",
                               expected="one integer (µs)")
    value = int(raw[0])
    if not 0 <= value <= MAX_TIME_US:
        raise EventFormatError(path, f"t_offset={value}", expected="0 <= t_offset < 2^63")
    return value


def _check_ms_to_idx(path: Path, ms_to_idx: np.ndarray, t: np.ndarray, first: int) -> None:
    """Within a chunk of relative timestamps starting at index `first`, every ms_to_idx entry that
    points into the chunk must be the first event at or after that millisecond."""
    last = first + len(t)
    ms = np.flatnonzero((ms_to_idx >= first) & (ms_to_idx < last))
    if not ms.size:
        return
    idx = ms_to_idx[ms] - first
    ok = t[idx] >= ms * 1000
    prev = idx - 1
    ok &= np.where(prev >= 0, t[np.maximum(prev, 0)] < ms * 1000, True)
    if not ok.all():
        k = int(ms[np.flatnonzero(~ok)[0]])
        raise EventFormatError(path, f"ms_to_idx[{k}] = {int(ms_to_idx[k])} does not point at the "
                               f"first event of millisecond {k}", record=int(ms_to_idx[k]),
                               expected="the DSEC ms_to_idx convention")


class Recorder:
    """Append event packets to our HDF5 layout while a stream runs; crash-safe up to `flush()`.

    `Recorder(path, sensor_size, metadata=..., flush_every=..., flush_interval_s=...)` is a
    context manager; `append(packet)` writes, and flushes once `flush_every` events or
    `flush_interval_s` seconds have passed since the last flush (0 / None: neither), so a writer
    killed at any moment loses at most the events of the last `flush_interval_s` (0.5 s by
    default) while packets keep coming (an empty packet also flushes when the time is due; live
    sources yield one every poll).
    """

    def __init__(self, path: str | Path, sensor_size: SensorSize, *,
                 metadata: dict[str, Any] | None = None, flush_every: int = 1 << 18,
                 flush_interval_s: float | None = 0.5,
                 compression: str | None = "gzip") -> None:
        self.path = Path(path)
        self.sensor_size = check_sensor_size(sensor_size, source=self.path)
        self.flush_every = int(flush_every)
        self.flush_interval_s = flush_interval_s
        self._flushed_at = time.monotonic()
        self._file = _h5py().File(self.path, "w", libver="latest")
        self._file.attrs["format"] = LAYOUT
        self._file.attrs["version"] = VERSION
        self._file.attrs["sensor_size"] = np.asarray(self.sensor_size, dtype=np.int64)
        self._file.attrs["metadata"] = json.dumps(metadata or {}, default=str)
        opts: dict[str, Any] = {"compression": compression, "shuffle": compression is not None}
        if compression == "gzip":
            opts["compression_opts"] = 1
        self._events = self._file.create_dataset(
            "events", shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE, chunks=(CHUNK,), **opts
        )
        self._committed = self._file.create_dataset("n_committed", data=np.zeros(1, np.int64))
        self._file.swmr_mode = True
        self._n = 0
        self._since_flush = 0
        self._last_t: int | None = None

    def __len__(self) -> int:
        return self._n

    def append(self, packet: np.ndarray) -> None:
        """Write a time-ordered packet that continues the stream."""
        if self._file is None:
            raise ValueError(f"{self.path}: recorder is closed")
        ev = as_events(np.asarray(packet))
        if len(ev):
            validate_events(ev, self.sensor_size, source=self.path, first=self._n,
                            last_t=self._last_t)
            n = self._n + len(ev)
            self._events.resize((n,))
            self._events[self._n:n] = ev
            self._n = n
            self._last_t = int(ev["t"][-1])
            self._since_flush += len(ev)
        if self._since_flush and (
            (self.flush_every and self._since_flush >= self.flush_every)
            or (self.flush_interval_s is not None
                and time.monotonic() - self._flushed_at >= self.flush_interval_s)):
            self.flush()

    def flush(self) -> None:
        """Make every appended event durable: a reader (or a crash) sees at least these."""
        if self._file is None:
            return
        self._events.flush()
        self._committed[0] = self._n
        self._file.flush()
        self._since_flush = 0
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_events(path: str | Path, recording: Recording, *, compression: str | None = "gzip"
                 ) -> None:
    """Write a `Recording` to our HDF5 layout."""
    with Recorder(path, recording.sensor_size, metadata=recording.metadata, flush_every=0,
                  flush_interval_s=None, compression=compression) as rec:
        ev = recording.events
        for i in range(0, len(ev), 1 << 20):
            rec.append(ev[i:i + (1 << 20)])


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff_layout(path: Path, head: bytes) -> str | None:
    """'hdf5' (ours) or 'dsec' for an HDF5 file with an events layout; None for other files."""
    if not head.startswith(_HDF5_MAGIC):
        return None
    f5, _ = _open(path)
    with f5:
        kind = layout_of(f5)
    if kind is None:
        raise EventFormatError(path, "HDF5 file without an events layout",
                               expected="our /events layout or DSEC's events/{x,y,t,p}")
    return kind


register_format(Format(
    "hdf5", (".h5", ".hdf5"), "\\x89HDF + format attribute", "h5py", "chunked reads",
    open=open_source, sniff=lambda path, head: sniff_layout(path, head) == "hdf5",
    write=write_events))
register_format(Format(
    "dsec", (".h5", ".hdf5"), "\\x89HDF + events/{x,y,t,p}", "h5py", "chunked reads",
    open=open_source, sniff=lambda path, head: sniff_layout(path, head) == "dsec"))
