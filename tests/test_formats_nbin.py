"""N-MNIST / N-Caltech101 binary: the real N-MNIST samples against Tonic's reader, and overflow
records written by an independent encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikestream import EventFormatError
from spikestream.datasets import detect_format, iter_events, read_events

TONIC_DTYPE = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])


def test_real_nmnist_samples_match_tonic(real_data: Path) -> None:
    tonic_io = pytest.importorskip("tonic.io")
    files = sorted((real_data / "nmnist-small" / "train").glob("*.bs2"))
    assert len(files) == 1000
    counts, t_max = [], 0
    for path in files[::10]:  # every 10th: 100 files keeps this fast
        rec = read_events(path)
        assert rec.sensor_size == (34, 34, 2)
        assert len(rec) == path.stat().st_size // 5  # no overflow records in N-MNIST
        theirs = tonic_io.read_mnist_file(str(path), dtype=TONIC_DTYPE)
        for k in "xytp":
            np.testing.assert_array_equal(rec.events[k], theirs[k], err_msg=f"{path.name} {k}")
        counts.append(len(rec))
        t_max = max(t_max, rec.t_end_us)
    assert 1_069 <= min(counts) and max(counts) <= 7_152
    assert t_max <= 336_000


def test_nmnist_count_range_over_all_files(real_data: Path) -> None:
    files = sorted((real_data / "nmnist-small" / "train").glob("*.bs2"))
    counts = [len(read_events(p)) for p in files]
    assert max(counts) == 7_152
    assert min(counts) >= 1_069


def encode_nbin(ev: np.ndarray) -> bytes:
    """Independent writer: one 5-byte record per event, an overflow record (y = 240) each time
    t passes another multiple of 2^23 µs."""
    out = bytearray()
    wraps = 0
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"], strict=True):
        while int(t) >> 23 > wraps:
            wraps += 1
            out += bytes([0, 240, 0, 0, 0])
        low = int(t) & ((1 << 23) - 1)
        out += bytes([int(x), int(y), (int(p) << 7) | (low >> 16), (low >> 8) & 0xFF, low & 0xFF])
    return bytes(out)


def test_overflow_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 3000
    ev = np.zeros(n, dtype=[("x", "u2"), ("y", "u2"), ("t", "i8"), ("p", "u1")])
    ev["x"] = rng.integers(0, 200, n)
    ev["y"] = rng.integers(0, 180, n)
    ev["t"] = np.sort(rng.integers(0, 3 * 2**23, n))
    ev["p"] = rng.integers(0, 2, n)
    path = tmp_path / "image_0001.bin"
    path.write_bytes(encode_nbin(ev))
    assert detect_format(path) == "nbin"
    rec = read_events(path)
    for k in "xytp":
        np.testing.assert_array_equal(rec.events[k], ev[k])
    assert rec.sensor_size == (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1, 2)
    assert rec.metadata["sensor_size_inferred"] is True
    streamed = list(iter_events(path, chunk_events=250))
    np.testing.assert_array_equal(np.concatenate(streamed), rec.events)


def test_truncated_and_unsorted(tmp_path: Path) -> None:
    path = tmp_path / "t.bs2"
    path.write_bytes(bytes([1, 2, 0, 0, 9, 1, 2, 0]))
    with pytest.raises(EventFormatError, match="truncated") as e:
        read_events(path)
    assert e.value.offset == 5 and e.value.record == 1
    path.write_bytes(bytes([1, 2, 0, 0, 9, 1, 2, 0, 0, 3]))
    with pytest.raises(EventFormatError, match="goes back") as e:
        read_events(path)
    assert e.value.offset == 5 and e.value.record == 1
