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
