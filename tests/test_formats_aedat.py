"""AEDAT 2.0 (real DAVIS240C file vs its MATLAB export), AEDAT 3.1 (bytes written by an
independent encoder here), AEDAT 4 (real DVXplorer sample)."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from decoder_paths import decoder_path  # noqa: F401

from spikestream import EVENT_DTYPE, EventFormatError
from spikestream.datasets import detect_format, iter_events, read_events

# ---------------------------------------------------------------- AEDAT 2.0


def test_aedat2_matches_matlab_export(real_data: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    rec = read_events(real_data / "aedat2" / "IMU_rotDisk.aedat")
    assert rec.metadata["format"] == "aedat2"
    assert rec.sensor_size == (240, 180, 2)
    assert len(rec) == 374_296
    assert abs(rec.events["p"].mean() - 0.44) < 0.01
    mat = scipy_io.loadmat(str(real_data / "aedat2" / "rotDisk.mat"))["rotDisk"]
    # The export starts at the second DVS event, with t relative to it; y is jAER's (bottom-up).
    ev = rec.events[1:]
    assert len(ev) == len(mat)
    np.testing.assert_array_equal(ev["x"], mat[:, 0])
    np.testing.assert_array_equal(ev["y"], 179 - mat[:, 1])
    np.testing.assert_array_equal(ev["p"], mat[:, 2] > 0)
    np.testing.assert_array_equal(ev["t"] - ev["t"][0], mat[:, 3])


def test_aedat2_skips_aps_and_imu_words(real_data: Path) -> None:
    path = real_data / "aedat2" / "IMU_rotDisk.aedat"
    data = path.read_bytes()
    pos = 0  # independent count: '#' header lines, then big-endian (address, timestamp) words
    while data[pos:pos + 1] == b"#":
        pos = data.index(b"\n", pos) + 1
    addr = np.frombuffer(data, dtype=">u4", offset=pos)[0::2]
    assert (addr >> 31).sum() > 0  # the file really holds APS/IMU words
    assert int(((addr >> 31) == 0).sum()) == len(read_events(path))


def _aedat2_bytes(words: list[tuple[int, int]], chip: str = "DAVIS240C") -> bytes:
    head = f"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.{chip}\r\n".encode()
    return head + b"".join(struct.pack(">Ii", a, t) for a, t in words)


def test_aedat2_written_words(tmp_path: Path) -> None:
    def dvs(x: int, y_jaer: int, p: int) -> int:
        return (y_jaer << 22) | (x << 12) | (p << 11)

    words = [(dvs(3, 0, 1), 10), (0x80000C00 | 5, 11), (dvs(239, 179, 0), 12),
             (dvs(1, 2, 1) | (1 << 10), 13), (dvs(7, 100, 0), 2**31 - 1)]
    path = tmp_path / "w.aedat"
    path.write_bytes(_aedat2_bytes(words))
    ev = read_events(path).events
    assert ev["x"].tolist() == [3, 239, 7]
    assert ev["y"].tolist() == [179, 0, 79]
    assert ev["p"].tolist() == [1, 0, 0]
    assert ev["t"].tolist() == [10, 12, 2**31 - 1]


def test_aedat2_truncated_and_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "t.aedat"
    good = _aedat2_bytes([((5 << 22) | (6 << 12), 1), ((5 << 22) | (6 << 12), 2)])
    path.write_bytes(good[:-3])
    with pytest.raises(EventFormatError, match="truncated") as e:
        read_events(path)
    assert e.value.offset == len(good) - 8
    path.write_bytes(_aedat2_bytes([((200 << 22) | (6 << 12), 1)]))  # y_jaer 200 >= 180
    with pytest.raises(EventFormatError, match="outside") as e:
        read_events(path)
    assert e.value.offset == len(good) - 16
    path.write_bytes(_aedat2_bytes([((5 << 22), 9), ((5 << 22), 3)]))
    with pytest.raises(EventFormatError, match="goes back") as e:
        read_events(path)
    assert e.value.record == 1 and e.value.offset == len(good) - 8
    path.write_bytes(_aedat2_bytes([(0, 1)], chip="Tmpdiff128"))
    with pytest.raises(EventFormatError, match="DAVIS"):
        read_events(path)


# ---------------------------------------------------------------- AEDAT 3.1


def encode_aedat31(packets: list[dict]) -> bytes:
    """Independent AEDAT 3.1 writer (struct-based, one event at a time)."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n",
           b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n", b"#!END-HEADER\r\n"]
    for pk in packets:
        if pk["type"] == 1:
            body = b"".join(
                struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | valid, ts)
                for x, y, p, ts, valid in pk["events"]
            )
            size, n = 8, len(pk["events"])
            nvalid = sum(e[4] for e in pk["events"])
        else:  # e.g. a special-event packet (type 0, 8-byte events) or a frame-like blob
            size, n = pk["size"], pk["n"]
            body = bytes(range(256)) * (size * n // 256 + 1)
            body = body[: size * n]
            nvalid = n
        out.append(struct.pack("<hhiiiiii", pk["type"], 1, size, 4, pk.get("overflow", 0),
                               n, n, nvalid))
        out.append(body)
    return b"".join(out)


def _gesture_like_packets(rng: np.random.Generator) -> tuple[list[dict], np.ndarray]:
    """Polarity packets (some events invalid) around a 31-bit timestamp wrap, with special and
    frame-like packets in between that the reader must skip."""
    packets: list[dict] = []
    expected = []
    t = 2**31 - 200_000
    for k in range(12):
        if k % 4 == 1:
            packets.append({"type": 0, "size": 8, "n": 3})
            continue
        if k % 4 == 3:
            packets.append({"type": 2, "size": 37, "n": 2})
            continue
        overflow = int(k >= 6)
        if k == 6:
            t = 0  # the 31-bit counter wrapped: the overflow count carries the high bits
        evs = []
        for _ in range(int(rng.integers(1, 50))):
            t += int(rng.integers(0, 1000))
            x, y, p = int(rng.integers(0, 128)), int(rng.integers(0, 128)), int(rng.integers(0, 2))
            valid = int(rng.random() > 0.1)
            evs.append((x, y, p, t, valid))
            if valid:
                expected.append((x, y, (overflow << 31) + t, p))
        packets.append({"type": 1, "events": evs, "overflow": overflow})
    exp = np.array(expected, dtype=[("x", "u2"), ("y", "u2"), ("t", "i8"), ("p", "u1")])
    return packets, exp


def test_aedat31_roundtrip_with_overflow_and_other_packets(tmp_path: Path) -> None:
    packets, exp = _gesture_like_packets(np.random.default_rng(7))
    path = tmp_path / "user01_fluorescent.aedat"
    path.write_bytes(encode_aedat31(packets))
    assert detect_format(path) == "aedat3"
    rec = read_events(path)
    assert rec.sensor_size == (128, 128, 2)
    for k in "xytp":
        np.testing.assert_array_equal(rec.events[k], exp[k])
    assert rec.events["t"].max() > 2**31  # the overflow packets really were applied
    streamed = np.concatenate(list(iter_events(path, chunk_events=7)))
    np.testing.assert_array_equal(streamed, rec.events)


def test_aedat31_lying_headers(tmp_path: Path) -> None:
    good = encode_aedat31([{"type": 1, "events": [(1, 2, 1, 5, 1), (3, 4, 0, 6, 1)]}])
    hdr_at = good.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    path = tmp_path / "bad.aedat"
    lie = bytearray(good)
    struct.pack_into("<i", lie, hdr_at + 16, 1000)  # capacity 1000, 16 bytes present
    path.write_bytes(bytes(lie))
    with pytest.raises(EventFormatError, match="remain") as e:
        read_events(path)
    assert e.value.offset == hdr_at
    lie = bytearray(good)
    struct.pack_into("<i", lie, hdr_at + 20, 3)  # number 3 > capacity 2
    path.write_bytes(bytes(lie))
    with pytest.raises(EventFormatError, match="capacity") as e:
        read_events(path)
    path.write_bytes(good[:hdr_at + 10])
    with pytest.raises(EventFormatError, match="truncated packet header") as e:
        read_events(path)
    assert e.value.offset == hdr_at
    path.write_bytes(good.replace(b"#!END-HEADER\r\n", b""))
    with pytest.raises(EventFormatError, match="END-HEADER"):
        read_events(path)


def test_tonic_read_dvs_ibm_fails_on_aedat31(tmp_path: Path) -> None:
    """The reason for our own decoder: Tonic 1.7's reader cannot read a valid 3.1 file."""
    tonic_io = pytest.importorskip("tonic.io")
    path = tmp_path / "g.aedat"
    path.write_bytes(encode_aedat31([{"type": 1, "events": [(1, 2, 1, 5, 1)]}]))
    with pytest.raises(ValueError, match="unpack"):
        tonic_io.read_dvs_ibm(str(path))
    assert len(read_events(path)) == 1


# ---------------------------------------------------------------- AEDAT 4


@pytest.mark.usefixtures("decoder_path")
def test_aedat4_sample(real_data: Path) -> None:
    path = real_data / "aedat4" / "sample.aedat4"
    rec = read_events(path)
    assert rec.metadata["format"] == "aedat4"
    assert rec.sensor_size == (320, 240, 2)
    assert len(rec) == 111_954
    assert abs(rec.events["p"].mean() - 0.49) < 0.01
    assert 0.55 < (rec.t_end_us - rec.t_start_us) / 1e6 < 0.62
    stream = iter_events(path, chunk_events=10_000)
    assert stream.sensor_size == (320, 240, 2)
    packets = list(stream)
    assert all(len(p) == 10_000 for p in packets[:-1]) and packets[0].dtype == EVENT_DTYPE
    np.testing.assert_array_equal(np.concatenate(packets), rec.events)


@pytest.mark.usefixtures("decoder_path")
def test_aedat4_agrees_with_tonic(real_data: Path) -> None:
    tonic_io = pytest.importorskip("tonic.io")
    path = real_data / "aedat4" / "sample.aedat4"
    ours = read_events(path).events
    theirs = tonic_io.read_aedat4(str(path))
    np.testing.assert_array_equal(ours["x"], theirs["x"])
    np.testing.assert_array_equal(ours["y"], theirs["y"])
    np.testing.assert_array_equal(ours["t"], theirs["t"])
    np.testing.assert_array_equal(ours["p"], theirs["p"])


def test_aedat2_addresses_of_a_smaller_chip_than_named_warn_with_the_chip_assumed(
        real_data: Path, tmp_path: Path) -> None:
    src = real_data / "aedat2" / "IMU_rotDisk.aedat"  # a DAVIS240C recording
    data = src.read_bytes()
    assert b"davis.DAVIS240C" in data[:2000]
    path = tmp_path / "mislabelled.aedat"
    path.write_bytes(data.replace(b"davis.DAVIS240C", b"davis.DAVIS346B", 1))
    with pytest.warns(RuntimeWarning, match="names DAVIS346 .* fit DAVIS240"):
        rec = read_events(path)
    assert rec.metadata["chip_assumed"] == "DAVIS346" and rec.sensor_size == (346, 260, 2)
    right = read_events(src)
    assert right.metadata["chip_assumed"] == "DAVIS240"
    # what the assumption did: every y flipped against 260 rows instead of 180
    np.testing.assert_array_equal(rec.events["y"], right.events["y"] + 80)
    np.testing.assert_array_equal(rec.events["x"], right.events["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_events(src)  # the correctly named file does not warn


@pytest.mark.usefixtures("decoder_path")
def test_aedat4_event_outside_a_given_sensor_is_named(real_data: Path) -> None:
    """Packets joined across the decoder's packets: the first event outside the sensor is named
    by its index in the whole stream, on either decoder path."""
    path = real_data / "aedat4" / "sample.aedat4"
    ev = read_events(path).events
    first_out = int(np.flatnonzero(ev["x"] >= 100)[0])
    for chunk in (1 << 24, 3_000):
        with pytest.raises(EventFormatError, match="outside the sensor") as e:
            for _ in iter_events(path, chunk_events=chunk, sensor_size=(100, 240)):
                pass
        assert e.value.record == first_out
