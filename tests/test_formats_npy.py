""".npy / .npz structured arrays (Tonic style)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikestream import EventFormatError
from spikestream.datasets import detect_format, iter_events, read_events


def _tonic_like(n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(1)
    a = np.zeros(n, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    a["x"], a["y"] = rng.integers(0, 34, n), rng.integers(0, 20, n)
    a["t"], a["p"] = np.sort(rng.integers(0, 10**6, n)), rng.integers(0, 2, n)
    return a


def test_npy_roundtrip_and_stream(tmp_path: Path) -> None:
    a = _tonic_like()
    path = tmp_path / "s.npy"
    np.save(path, a)
    assert detect_format(path) == "npy"
    rec = read_events(path)
    for k in "xytp":
        np.testing.assert_array_equal(rec.events[k], a[k])
    assert rec.sensor_size == (int(a["x"].max()) + 1, int(a["y"].max()) + 1, 2)
    stream = iter_events(path, chunk_events=64)
    np.testing.assert_array_equal(np.concatenate(list(stream)), rec.events)


def test_npz_with_sensor_size_and_bool_polarity(tmp_path: Path) -> None:
    a = _tonic_like()
    b = np.zeros(len(a), dtype=[("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
    for k in "txy":
        b[k] = a[k]
    b["p"] = a["p"] > 0
    path = tmp_path / "s.npz"
    np.savez_compressed(path, events=b, sensor_size=np.array([34, 34, 2]))
    rec = read_events(path)
    assert rec.metadata["format"] == "npz" and rec.sensor_size == (34, 34, 2)
    for k in "xytp":
        np.testing.assert_array_equal(rec.events[k], a[k])


def test_bad_arrays(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(3, dtype=[("x", "<i8"), ("t", "<i8")]))
    with pytest.raises(EventFormatError, match="fields"):
        read_events(path)
    np.save(path, np.zeros(3, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<f8"), ("p", "<i8")]))
    with pytest.raises(EventFormatError, match="integer"):
        read_events(path)
    a = _tonic_like(10)
    a["x"][4] = -1
    np.save(path, a)
    with pytest.raises(EventFormatError, match="x=-1") as e:
        read_events(path)
    assert e.value.record == 4
    a = _tonic_like(10)
    np.save(path, a)
    data = path.read_bytes()
    path.write_bytes(data[:-16])  # header claims more than is stored
    with pytest.raises(EventFormatError):
        read_events(path)
    path.write_bytes(data + b"\0" * 32)  # header claims less than is stored
    with pytest.raises(EventFormatError, match="header describes"):
        read_events(path)
    a = _tonic_like(10)
    a["t"][7] = a["t"][6] - 1
    np.save(path, a)
    with pytest.raises(EventFormatError, match="goes back") as e:
        read_events(path)
    assert e.value.record == 7


def _npz_member(path: Path, header_dtype: np.dtype, n: int, body: bytes | None) -> None:
    """An .npz whose `events` member declares `n` records and holds `body` (zeros if None)."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(
        header_dtype), "fortran_order": False, "shape": (n,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("events.npy", "w") as f:
        f.write(head.getvalue())
        if body is not None:
            f.write(body)
        else:
            block = bytes(1 << 24)
            left = n * header_dtype.itemsize
            while left:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))


def test_an_npz_that_inflates_to_gigabytes_is_refused_before_inflating(tmp_path: Path) -> None:
    import time
    import tracemalloc

    from spikestream import EVENT_DTYPE

    path = tmp_path / "bomb.npz"
    _npz_member(path, EVENT_DTYPE, (1 << 30) // 16, None)  # 1 GiB of zeros, ~1 MiB on disk
    assert path.stat().st_size < 4 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(EventFormatError, match="compressed"):
        read_events(path)
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20 and took < 2


def test_an_npz_is_inflated_chunk_by_chunk(tmp_path: Path) -> None:
    import tracemalloc

    n = 2_000_000  # 32 MiB of events in the member
    rng = np.random.default_rng(3)
    ev = np.zeros(n, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
    ev["x"], ev["y"] = rng.integers(0, 640, n), rng.integers(0, 480, n)
    ev["t"] = np.cumsum(rng.integers(0, 50, n))
    path = tmp_path / "big.npz"
    np.savez_compressed(path, events=ev, sensor_size=np.array([640, 480, 2]))
    tracemalloc.start()
    total = 0
    with iter_events(path, chunk_events=1 << 15) as s:
        assert s.sensor_size == (640, 480, 2)
        for p in s:
            total += len(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == n and peak < 8 << 20
    truncated = tmp_path / "short.npz"
    _npz_member(truncated, ev.dtype, 1000, ev[:10].tobytes())  # declares 1000, holds 10
    with pytest.raises(EventFormatError, match="claims"):
        read_events(truncated)
