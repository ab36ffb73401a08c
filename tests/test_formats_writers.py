"""Every writer in the format registry: written, read back by our reader, the same events (and
sensor size where the format stores one); `convert` on the real recordings into every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikestream import EventFormatError, Recording, make_events
from spikestream.cli import main
from spikestream.datasets import FORMATS, detect_format, iter_events, read_events, write_events
from spikestream.datasets.prophesee import parse_header

#: formats that store the sensor size (the others are read back at the events' extent)
SIZED = {"hdf5", "npz", "aedat4", "evt2", "evt3", "dat"}
#: output extension of each writer
EXTENSION = {"hdf5": ".h5", "npy": ".npy", "npz": ".npz", "aedat4": ".aedat4", "evt2": ".raw",
             "evt3": ".raw", "dat": ".dat", "csv": ".csv"}


def test_every_format_the_field_uses_has_a_writer():
    assert {n for n, f in FORMATS.items() if f.write is not None} == set(EXTENSION)


def _random(n: int, size: tuple[int, int, int], seed: int = 0) -> Recording:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 20_000_000, n)) + 123  # > 2^24 µs: EVT time-high words wrap
    t[10:20] = t[10]  # equal timestamps
    ev = make_events(rng.integers(0, size[0], n), rng.integers(0, size[1], n), t,
                     rng.integers(0, 2, n))
    ev["x"][0], ev["y"][0] = size[0] - 1, size[1] - 1  # the sensor's corners are in range
    ev["x"][1], ev["y"][1] = 0, 0
    return Recording(ev, size)


@pytest.mark.parametrize("name", sorted(EXTENSION))
def test_each_writer_round_trips_through_our_reader(tmp_path: Path, name: str):
    rec = _random(30_000, (346, 260, 2), seed=len(name))
    path = tmp_path / f"out{EXTENSION[name]}"
    write_events(path, rec, format=name)
    assert detect_format(path) == name  # by content
    back = read_events(path)
    np.testing.assert_array_equal(back.events, rec.events)
    assert back.sensor_size == rec.sensor_size
    with iter_events(path, chunk_events=4096) as s:  # and streamed in chunks
        np.testing.assert_array_equal(np.concatenate(list(s)), rec.events)
    # the temporary file was renamed: nothing else is left beside the output
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("name", sorted(SIZED))
def test_sized_formats_keep_a_sensor_larger_than_the_events(tmp_path: Path, name: str):
    rec = Recording(make_events([1, 2, 3], [0, 5, 1], [10, 20, 20], [0, 1, 1]), (640, 480, 2))
    path = tmp_path / f"small{EXTENSION[name]}"
    write_events(path, rec, format=name)
    back = read_events(path)
    assert back.sensor_size == (640, 480, 2)
    np.testing.assert_array_equal(back.events, rec.events)


def test_prophesee_files_carry_their_encoding_and_geometry_in_the_header(tmp_path: Path):
    rec = _random(100, (1280, 720, 2))
    for name in ("evt2", "evt3", "dat"):
        path = tmp_path / f"h{name}{EXTENSION[name]}"
        write_events(path, rec, format=name)
        _, lines = parse_header(path)
        assert "geometry 1280x720" in lines
        assert any(("evt " + name[-1] + ".0") == ln or "Event2D" in ln for ln in lines)
    with pytest.raises(ValueError, match="does not fit EVT2"):
        write_events(tmp_path / "big.raw", Recording(rec.events, (4096, 720, 2)))
    with pytest.raises(ValueError, match="does not fit EVT3"):
        write_events(tmp_path / "big.raw", Recording(rec.events, (4096, 720, 2)), format="evt3")
    # epoch timestamps (AEDAT 4's) are written from a t0 the header names, and read back whole
    late = rec.events.copy()
    late["t"] += 1_605_537_493_718_345
    for name in ("evt2", "evt3", "dat"):
        path = tmp_path / f"late{name}{EXTENSION[name]}"
        write_events(path, Recording(late, (1280, 720, 2)), format=name)
        _, lines = parse_header(path)
        assert f"{'T0' if name == 'dat' else 't0'} {int(late['t'][0])}" in lines
        np.testing.assert_array_equal(read_events(path).events, late)
    long = rec.events.copy()
    long["t"][-1] = 1 << 33  # a span past 32-bit µs
    with pytest.raises(ValueError, match="spans"):
        write_events(tmp_path / "long.dat", Recording(long, (1280, 720, 2)))
    assert not (tmp_path / "long.dat").exists() and not (tmp_path / "big.raw").exists()


def test_csv_is_plain_text_with_a_header_and_malformed_lines_are_named(tmp_path: Path):
    rec = Recording(make_events([1, 2], [0, 5], [10, 20], [0, 1]), (8, 6, 2))
    path = tmp_path / "e.csv"
    write_events(path, rec)
    assert path.read_text() == "t,x,y,p\n10,1,0,0\n20,2,5,1\n"
    other = tmp_path / "o.csv"  # another column order and -1/1 polarity (faery-style names)
    other.write_text("x,y,on,t\n1,0,-1,10\n2,5,1,20\n")
    np.testing.assert_array_equal(read_events(other).events, rec.events)
    bad = tmp_path / "bad.csv"
    bad.write_text("t,x,y,p\n10,1,0,0\n20,2,five,1\n")
    with pytest.raises(EventFormatError, match="bad.csv"):
        read_events(bad)


REAL = ["aedat4/sample.aedat4", "aedat2/IMU_rotDisk.aedat", "prophesee/evt3_sample.raw",
        "prophesee/dat_test_NCARS.dat", "nmnist-small/train/1.bs2"]


@pytest.mark.parametrize("src", REAL)
def test_convert_writes_real_recordings_in_every_format(real_data: Path, tmp_path: Path,
                                                        src: str, capsys):
    rec = read_events(real_data / src)
    for name, ext in EXTENSION.items():
        out = tmp_path / f"{name}{ext}"
        args = ["convert", str(real_data / src), str(out), "--quiet", "--to", name]
        assert main(args) == 0, capsys.readouterr().err
        back = read_events(out)
        np.testing.assert_array_equal(back.events, rec.events, err_msg=f"{src} -> {name}")
        if name in SIZED:
            assert back.sensor_size == rec.sensor_size, name
    # by extension alone: .raw is EVT 2.0
    assert main(["convert", str(real_data / src), str(tmp_path / "x.raw"), "--quiet"]) == 0
    assert detect_format(tmp_path / "x.raw") == "evt2"
