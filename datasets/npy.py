"""`.npy` / `.npz` structured event arrays (Tonic style: fields x, y, t, p; `ts` is taken for t).

`.npy` is memory-mapped, so streaming reads it chunk by chunk; `.npz` is a zip: its events array
is inflated chunk by chunk (after checking that its header agrees with the size the zip declares,
and that size with the compressed bytes: at most `MAX_INFLATE` times), never whole. An
`.npz` may hold `sensor_size` beside `events`. Pickled object arrays are never loaded.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.events import (
    EventFormatError,
    Recording,
    SensorSize,
    check_sensor_size,
    checked_events,
)

_T_NAMES = ("t", "ts")
#: Largest ratio of a member's declared size to its compressed size (deflate reaches ~1000).
MAX_INFLATE = 200


def _fields(dtype: np.dtype, shape: tuple[int, ...], path: Path) -> tuple[str, str, str, str]:
    names = dtype.names or ()
    t = next((n for n in _T_NAMES if n in names), None)
    if t is None or not {"x", "y", "p"} <= set(names):
        raise EventFormatError(path, f"array fields {names or dtype}",
                               expected="a structured array with fields x, y, t, p")
    for n in ("x", "y", t):
        if dtype[n].kind not in "iu":
            raise EventFormatError(path, f"field {n!r} has dtype {dtype[n]}",
                                   expected="integer x, y and t (µs)")
    if dtype["p"].kind not in "iub":
        raise EventFormatError(path, f"field 'p' has dtype {dtype['p']}",
                               expected="integer or bool polarity")
    if len(shape) != 1:
        raise EventFormatError(path, f"array shape {shape}", expected="a 1-D array")
    return "x", "y", t, "p"


def to_events(arr: np.ndarray, names: tuple[str, str, str, str], path: Path,
              first: int) -> np.ndarray:
    """Convert a slice of a structured array to `EVENT_DTYPE`, refusing out-of-range values
    (a polarity > 0 is ON, anything else OFF, as Tonic's -1/1 and 0/1 conventions say)."""
    x, y, t, p = (np.asarray(arr[n]) for n in names)
    return checked_events(x, y, t, p > 0, source=path, first=first)


def _npz_member(zf: zipfile.ZipFile, name: str, path: Path
                ) -> tuple[IO[bytes], tuple[int, ...], np.dtype]:
    """An open member positioned after its .npy header, its shape and dtype.

    The header must agree with the size the zip declares for the member, and that size with the
    compressed bytes present (at most `MAX_INFLATE` times as many), so what is inflated stays in
    proportion to the file.
    """
    info = zf.getinfo(name)
    if info.file_size > MAX_INFLATE * info.compress_size + (1 << 16):
        raise EventFormatError(
            path, f"member {name} claims {info.file_size} bytes from {info.compress_size} "
            "compressed", expected=f"at most {MAX_INFLATE}x its compressed size")
    f = zf.open(info)
    try:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"npy version {version}")
        shape, fortran, dtype = reader(f)
        if dtype.hasobject:
            raise EventFormatError(path, f"member {name} holds Python objects",
                                   expected="a plain structured array")
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        have = info.file_size - f.tell()
        if need != have:
            raise EventFormatError(
                path, f"member {name}: header claims {need} bytes, {have} stored",
                expected="an array of the size its header states")
    except ValueError as e:
        f.close()
        if isinstance(e, EventFormatError):
            raise
        raise EventFormatError(path, f"member {name}: {e}", expected="an .npy header") from e
    except BaseException:
        f.close()
        raise
    return f, tuple(shape), dtype


def _read_exact(f: IO[bytes], n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EventFormatError(path, f"member ends after {len(data)} of {n} bytes",
                               expected="the bytes its header states")
    return data


def _open_npz(path: Path, chunk_events: int) -> tuple[SensorSize | None, Any]:
    """The sensor size and a generator of packets of an .npz, inflated chunk by chunk."""
    sensor: SensorSize | None = None
    zf = zipfile.ZipFile(path)
    try:
        members = [n.removesuffix(".npy") for n in zf.namelist()]
        key = "events" if "events" in members else (members[0] if members else None)
        if key is None:
            raise EventFormatError(path, "empty .npz", expected="an 'events' array")
        if "sensor_size" in members:
            f, shape, dtype = _npz_member(zf, "sensor_size.npy", path)
            with f:
                if dtype.kind not in "iu" or int(np.prod(shape)) not in (2, 3):
                    raise EventFormatError(path, f"sensor_size {dtype} of shape {shape}",
                                           expected="(W, H[, P]) integers")
                s = np.frombuffer(_read_exact(f, int(np.prod(shape)) * dtype.itemsize, path),
                                  dtype=dtype)
            sensor = check_sensor_size(s.tolist(), source=path)
        f, shape, dtype = _npz_member(zf, key + ".npy", path)
    except BaseException:
        zf.close()
        raise
    names = _fields(dtype, shape, path)

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        with zf, f:
            for i in range(0, shape[0], chunk_events):
                n = min(chunk_events, shape[0] - i)
                arr = np.frombuffer(_read_exact(f, n * dtype.itemsize, path), dtype=dtype)
                yield to_events(arr, names, path, i), None

    return sensor, packets()


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size (from an .npz `sensor_size` entry, else None), packets, metadata."""
    if zipfile.is_zipfile(path):
        try:
            sensor, gen = _open_npz(path, chunk_events)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
            raise EventFormatError(path, f"bad .npz: {e}", expected="a zip of .npy arrays") from e
        return sensor, gen, {}
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
    names = _fields(arr.dtype, arr.shape, path)

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for i in range(0, len(arr), chunk_events):
            yield to_events(arr[i:i + chunk_events], names, path, i), None

    return None, packets(), {}


def write_npy(path: Path, recording: Recording) -> None:
    """The events as an `EVENT_DTYPE` structured array (no sensor size: readers take the
    events' extent)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(recording.events), allow_pickle=False)


def write_npz(path: Path, recording: Recording) -> None:
    """`events` (EVENT_DTYPE) and `sensor_size` (W, H, P) in a compressed `.npz`."""
    with open(path, "wb") as f:
        np.savez_compressed(f, events=recording.events,
                            sensor_size=np.asarray(recording.sensor_size, dtype=np.int64))


register_format(Format(
    "npy", (".npy",), "\\x93NUMPY", "numpy", "memory-mapped",
    open=open_source, sniff=lambda path, head: head.startswith(b"\x93NUMPY"), write=write_npy))
register_format(Format(
    "npz", (".npz",), "PK\\x03\\x04", "numpy/zipfile", "inflated chunk by chunk",
    open=open_source, write=write_npz,
    sniff=lambda path, head: head.startswith(b"PK\x03\x04")
    or (head == b"" and path.suffix.lower() == ".npz")))
