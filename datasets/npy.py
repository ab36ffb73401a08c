"""`.npy` / `.npz` structured event arrays (Tonic style: fields x, y, t, p; `ts` is taken for t).

`.npy` is memory-mapped, so streaming reads it chunk by chunk; `.npz` is a zip: its events array
is loaded whole (after checking that its header agrees with the stored size), then chunked. An
`.npz` may hold `sensor_size` beside `events`. Pickled object arrays are never loaded.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.events import EventFormatError, Recording, SensorSize, checked_events

_T_NAMES = ("t", "ts")


def _fields(arr: np.ndarray, path: Path) -> tuple[str, str, str, str]:
    names = arr.dtype.names or ()
    t = next((n for n in _T_NAMES if n in names), None)
    if t is None or not {"x", "y", "p"} <= set(names):
        raise EventFormatError(path, f"array fields {names or arr.dtype}",
                               expected="a structured array with fields x, y, t, p")
    for n in ("x", "y", t):
        if arr.dtype[n].kind not in "iu":
            raise EventFormatError(path, f"field {n!r} has dtype {arr.dtype[n]}",
                                   expected="integer x, y and t (µs)")
    if arr.dtype["p"].kind not in "iub":
        raise EventFormatError(path, f"field 'p' has dtype {arr.dtype['p']}",
                               expected="integer or bool polarity")
    if arr.ndim != 1:
        raise EventFormatError(path, f"array shape {arr.shape}", expected="a 1-D array")
    return "x", "y", t, "p"


def to_events(arr: np.ndarray, names: tuple[str, str, str, str], path: Path,
              first: int) -> np.ndarray:
    """Convert a slice of a structured array to `EVENT_DTYPE`, refusing out-of-range values
    (a polarity > 0 is ON, anything else OFF, as Tonic's -1/1 and 0/1 conventions say)."""
    x, y, t, p = (np.asarray(arr[n]) for n in names)
    return checked_events(x, y, t, p > 0, source=path, first=first)


def _load_npz_member(zf: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    info = zf.getinfo(name)
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"npy version {version}")
            shape, fortran, dtype = reader(f)
        except ValueError as e:
            raise EventFormatError(path, f"member {name}: {e}", expected="an .npy header") from e
        if dtype.hasobject:
            raise EventFormatError(path, f"member {name} holds Python objects",
                                   expected="a plain structured array")
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        have = info.file_size - f.tell()
        if need != have:
            raise EventFormatError(
                path, f"member {name}: header claims {need} bytes, {have} stored",
                expected="an array of the size its header states")
        data = f.read(need)
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size (from an .npz `sensor_size` entry, else None), packets, metadata."""
    sensor: SensorSize | None = None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n.removesuffix(".npy") for n in zf.namelist()]
                key = "events" if "events" in members else (members[0] if members else None)
                if key is None:
                    raise EventFormatError(path, "empty .npz", expected="an 'events' array")
                arr = _load_npz_member(zf, key + ".npy", path)
                if "sensor_size" in members:
                    s = _load_npz_member(zf, "sensor_size.npy", path).ravel()
                    if len(s) not in (2, 3) or s.dtype.kind not in "iu" or (s <= 0).any():
                        raise EventFormatError(path, f"sensor_size {s}", expected="(W, H[, P]) > 0")
                    sensor = (int(s[0]), int(s[1]), int(s[2]) if len(s) == 3 else 2)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
            raise EventFormatError(path, f"bad .npz: {e}", expected="a zip of .npy arrays") from e
    else:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise EventFormatError(path, f"bad .npy: {e}", offset=0,
                                   expected="an .npy file of a structured array") from e
        end = arr.offset + arr.nbytes if isinstance(arr, np.memmap) else None
        if end is not None and end != path.stat().st_size:
            raise EventFormatError(path, f"header describes {end} bytes, file has "
                                   f"{path.stat().st_size}", offset=min(end, path.stat().st_size),
                                   expected="an array of the size its header states")
    names = _fields(arr, path)

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for i in range(0, len(arr), chunk_events):
            yield to_events(arr[i:i + chunk_events], names, path, i), None

    return sensor, packets(), {}


def write_npz(path: Path, recording: Recording) -> None:
    """`events` (EVENT_DTYPE) and `sensor_size` (W, H, P) in a compressed `.npz`."""
    with open(path, "wb") as f:
        np.savez_compressed(f, events=recording.events,
                            sensor_size=np.asarray(recording.sensor_size, dtype=np.int64))


register_format(Format(
    "npy", (".npy",), "\\x93NUMPY", "numpy", "memory-mapped",
    open=open_source, sniff=lambda path, head: head.startswith(b"\x93NUMPY")))
register_format(Format(
    "npz", (".npz",), "PK\\x03\\x04", "numpy/zipfile", "loaded whole",
    open=open_source, write=write_npz,
    sniff=lambda path, head: head.startswith(b"PK\x03\x04")
    or (head == b"" and path.suffix.lower() == ".npz")))
