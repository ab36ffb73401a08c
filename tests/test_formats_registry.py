"""The format registry: lookup by content and extension, writers, a new format as one entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikestream import EventFormatError, Recording, make_events
from spikestream.datasets import FORMATS, detect_format, iter_events, read_events, write_events
from spikestream.datasets.formats import Format, register_format


def _rec() -> Recording:
    return Recording(make_events([1, 2, 3], [0, 5, 1], [10, 20, 20], [0, 1, 1]), (8, 6, 2))


def test_every_builtin_format_is_registered_with_an_opener():
    assert {"aedat2", "aedat3", "aedat4", "evt2", "evt3", "dat", "nbin", "hdf5", "dsec", "npy",
            "npz"} <= set(FORMATS)
    for fmt in FORMATS.values():
        assert fmt.extensions and all(e.startswith(".") for e in fmt.extensions)
        assert callable(fmt.open)


@pytest.mark.parametrize("name", ["x.h5", "x.npz"])
def test_writers_round_trip_and_are_detected_by_content(tmp_path: Path, name: str):
    rec = _rec()
    path = tmp_path / name
    write_events(path, rec)
    moved = path.rename(tmp_path / "no_extension")  # content, not the name, says the format
    assert detect_format(moved) == ("hdf5" if name.endswith(".h5") else "npz")
    back = read_events(moved)
    np.testing.assert_array_equal(back.events, rec.events)
    assert back.sensor_size == rec.sensor_size


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path: Path):
    path = tmp_path / "out.h5"
    path.write_bytes(b"old")
    big = Recording(make_events([1], [1], [1], [0]), (70000, 6, 2))  # above the u2 range
    with pytest.raises(EventFormatError, match="sensor size"):
        write_events(path, big)
    outside = make_events(np.arange(3000), np.zeros(3000), np.arange(3000), np.zeros(3000))
    with pytest.raises(ValueError, match="outside"):  # fails inside the writer, after a chunk
        write_events(path, Recording(outside, (100, 6, 2)))
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    with pytest.raises(ValueError, match="no writer"):
        write_events(tmp_path / "x.aedat", _rec())  # AEDAT 2.0 / 3.1: read only


def test_a_new_format_is_one_registered_entry(tmp_path: Path):
    def open_text(path: Path, chunk: int):
        rows = np.loadtxt(path, dtype=np.int64, skiprows=1, ndmin=2)
        ev = make_events(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
        return (8, 6, 2), iter([(ev, None)]), {}

    register_format(Format("csvtest", (".csvtest",), "EVENTS header", "numpy", "whole",
                           open=open_text, sniff=lambda p, head: head.startswith(b"EVENTS")))
    try:
        path = tmp_path / "a.txt"
        path.write_text("EVENTS\n1 0 10 0\n2 5 20 1\n")
        assert detect_format(path) == "csvtest"
        with iter_events(path) as s:
            assert s.sensor_size == (8, 6, 2)
            assert [len(p) for p in s] == [2]
        path.write_text("EVENTS\n1 0 20 0\n2 5 10 1\n")  # the shared check applies to it too
        with pytest.raises(EventFormatError, match="record 1: timestamp 10 µs goes back"):
            read_events(path)
        with pytest.raises(ValueError, match="registered twice"):
            register_format(FORMATS["csvtest"])
    finally:
        del FORMATS["csvtest"]
