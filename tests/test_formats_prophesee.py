"""Prophesee DAT (real sample vs its decoded ground truth), EVT 2.0 (bytes from an independent
encoder here, and from expelliarmus' writer) and EVT 3.0 file handling (decoding itself:
tests/test_formats_evt3.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from decoder_paths import decoder_path  # noqa: F401

from spikestream import EventFormatError
from spikestream.datasets import detect_format, read_events


def _same(ours: np.ndarray, truth: np.ndarray) -> None:
    for k in "xytp":
        np.testing.assert_array_equal(ours[k], truth[k], err_msg=k)


@pytest.mark.usefixtures("decoder_path")
def test_dat_sample_equals_ground_truth(real_data: Path) -> None:
    path = real_data / "prophesee" / "dat_test_NCARS.dat"
    truth = np.load(real_data / "prophesee" / "dat_test_NCARS_decoded.npy")
    rec = read_events(path)
    assert rec.metadata["format"] == "dat"
    assert len(rec) == 4_407
    _same(rec.events, truth)
    assert rec.t_end_us - rec.t_start_us <= 100_000
    # the DAT header names no geometry: the size is inferred and says so
    assert rec.metadata["sensor_size_inferred"] is True
    assert rec.sensor_size == (int(truth["x"].max()) + 1, int(truth["y"].max()) + 1, 2)


def encode_evt2(ev: np.ndarray, header: str = "% evt 2.0\n% geometry 1280x720\n") -> bytes:
    """Independent EVT 2.0 writer: TIME_HIGH words (type 0x8, t >> 6) whenever the upper bits
    change, then CD_OFF/CD_ON words (type 0x0/0x1, t & 63 in bits 22-27, x in 11-21, y in 0-10)."""
    words = []
    high = None
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"], strict=True):
        if int(t) >> 6 != high:
            high = int(t) >> 6
            words.append((0x8 << 28) | (high & 0x0FFFFFFF))
        words.append((int(p) << 28) | ((int(t) & 63) << 22) | (int(x) << 11) | int(y))
    return header.encode() + np.asarray(words, dtype="<u4").tobytes()


@pytest.mark.usefixtures("decoder_path")
def test_evt2_independent_encoder(tmp_path: Path, real_data: Path) -> None:
    truth = np.load(real_data / "prophesee" / "evt3_sample.npy")[:5_000]
    path = tmp_path / "cam.raw"
    path.write_bytes(encode_evt2(truth))
    assert detect_format(path) == "evt2"
    rec = read_events(path)
    assert rec.sensor_size == (1280, 720, 2)
    _same(rec.events, truth)


@pytest.mark.usefixtures("decoder_path")
def test_evt2_written_by_expelliarmus(tmp_path: Path, real_data: Path) -> None:
    expelliarmus = pytest.importorskip("expelliarmus")
    truth = np.load(real_data / "prophesee" / "evt3_sample.npy")
    path = tmp_path / "saved.raw"
    expelliarmus.Wizard(encoding="evt2").save(path, truth)
    # expelliarmus writes a fixed header naming a 640x480 gen3 camera: a header that lies
    with pytest.raises(EventFormatError, match="outside the sensor"):
        read_events(path)
    _same(read_events(path, sensor_size=(1280, 720)).events, truth)


@pytest.mark.usefixtures("decoder_path")
def test_prophesee_with_unusual_name_and_bad_words(tmp_path: Path, real_data: Path) -> None:
    src = real_data / "prophesee" / "evt3_sample.raw"
    other = tmp_path / "recording.bin.evt"
    shutil.copyfile(src, other)
    assert detect_format(other) == "evt3"
    assert len(read_events(other)) == 219_596
    data = bytearray(src.read_bytes())
    at = 166 + 2 * 20_000
    data[at:at + 2] = (0x9000).to_bytes(2, "little")  # a word type EVT 3.0 does not define
    bad = tmp_path / "bad.raw"
    bad.write_bytes(bytes(data))
    with pytest.raises(EventFormatError, match="undefined EVT 3.0 word type 0x9") as e:
        read_events(bad)
    assert e.value.offset == at
    data[at:at + 2] = (0xA000).to_bytes(2, "little")  # EXT_TRIGGER: defined, not a CD event
    bad.write_bytes(bytes(data))
    assert 219_590 <= len(read_events(bad)) <= 219_596
    bad.write_bytes(src.read_bytes()[:-1])
    with pytest.raises(EventFormatError, match="truncated") as e:
        read_events(bad)
    assert e.value.offset == src.stat().st_size - 2


def test_dat_truncated(tmp_path: Path, real_data: Path) -> None:
    src = (real_data / "prophesee" / "dat_test_NCARS.dat").read_bytes()
    bad = tmp_path / "bad.dat"
    bad.write_bytes(src[:-3])
    with pytest.raises(EventFormatError, match="truncated") as e:
        read_events(bad)
    assert e.value.offset == len(src) - 8


@pytest.mark.usefixtures("decoder_path")
def test_dat_with_a_zeroed_run_is_an_implausible_overflow_repair(
        real_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from spikestream.datasets.prophesee import parse_header

    src = real_data / "prophesee" / "dat_test_NCARS.dat"
    start, _ = parse_header(src)
    data = bytearray(src.read_bytes())
    at = start + 2 + 8 * 1000  # after the type/size bytes, record 1000
    data[at:at + 8 * 50] = bytes(8 * 50)
    path = tmp_path / "zeroed.dat"
    path.write_bytes(bytes(data))
    with pytest.raises(EventFormatError, match="implausible timestamp-overflow") as e:
        read_events(path)
    assert e.value.record == 1000
    # the decoder's own warning is not shown; the intact file still reads, ending where it did
    out, err = capfd.readouterr()
    assert "WARNING" not in out + err
    assert int(read_events(src).events["t"][-1]) < 10**6


@pytest.mark.usefixtures("decoder_path")
def test_evt2_skipped_and_undefined_word_types_as_expelliarmus(tmp_path: Path,
                                                                real_data: Path) -> None:
    """EXT_TRIGGER, OTHERS and CONTINUED words hold no CD event: our decoders read the events
    expelliarmus (an independent C decoder) reads; an undefined type names its byte offset."""
    expelliarmus = pytest.importorskip("expelliarmus")
    truth = np.load(real_data / "prophesee" / "evt3_sample.npy")[:20_000]
    body = np.frombuffer(encode_evt2(truth, header=""), "<u4")
    rng = np.random.default_rng(5)
    at = np.sort(rng.choice(len(body), 300, replace=False))
    extra = rng.choice(np.array([0xA, 0xE, 0xF], np.uint32), 300) << 28
    words = np.insert(body, at, extra | rng.integers(0, 1 << 28, 300).astype(np.uint32))
    path = tmp_path / "skips.raw"
    path.write_bytes(b"% evt 2.0\n% geometry 1280x720\n" + words.tobytes())
    theirs = expelliarmus.Wizard(encoding="evt2", fpath=path).read()
    ours = read_events(path).events
    _same(ours, truth)
    for k in "xyt":
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    np.testing.assert_array_equal(ours["p"], theirs["p"] > 0)
    words[7_000] = 0x3 << 28
    path.write_bytes(b"% evt 2.0\n% geometry 1280x720\n" + words.tobytes())
    with pytest.raises(EventFormatError, match="undefined EVT 2.0 word type 0x3") as e:
        read_events(path)
    assert e.value.offset == len(b"% evt 2.0\n% geometry 1280x720\n") + 4 * 7_000


@pytest.mark.usefixtures("decoder_path")
def test_dat_32_bit_wrap_is_repaired(tmp_path: Path) -> None:
    """A DAT timestamp below its predecessor's is a wrap of the 32-bit µs counter (+2^32 on it
    and every later event); a small step back is no wrap but an implausible repair."""
    head = b"% Data file containing Event2D events.\n% Version 2\n% Width 64\n% Height 48\n"
    raw = [(1 << 32) - 100, (1 << 32) - 10, 5, 50]
    data = [(1 << 28) | (7 << 14) | 3, (9 << 14) | 4, (1 << 28) | 5, (2 << 28) | (47 << 14) | 63]
    path = tmp_path / "wrap.dat"
    path.write_bytes(head + b"\x0c\x08" + np.asarray(
        [v for pair in zip(raw, data, strict=True) for v in pair], "<u4").tobytes())
    ev = read_events(path).events
    assert ev["t"].tolist() == [(1 << 32) - 100, (1 << 32) - 10, (1 << 32) + 5, (1 << 32) + 50]
    assert ev["x"].tolist() == [3, 4, 5, 63] and ev["y"].tolist() == [7, 9, 0, 47]
    assert ev["p"].tolist() == [1, 0, 1, 1]
    raw[2] = (1 << 32) - 11  # one µs back: read as a wrap, a step of 2^32 - 1 µs
    path.write_bytes(head + b"\x0c\x08" + np.asarray(
        [v for pair in zip(raw, data, strict=True) for v in pair], "<u4").tobytes())
    with pytest.raises(EventFormatError, match="implausible timestamp-overflow") as e:
        read_events(path)
    assert e.value.record == 2
