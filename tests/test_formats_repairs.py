"""Timestamp-counter repairs must be plausible: a genuine wrap or overflow is repaired, while a
repair where the counter did not wrap (a flipped bit, a zeroed run, a forged overflow record or
count) is an error naming the record and byte offset, in AEDAT 2.0, AEDAT 3.1 and N-MNIST."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from spikestream import EventFormatError
from spikestream.datasets import iter_events, read_events

AEDAT2_HEADER = b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n"


def _aedat2(path: Path, stamps: list[int]) -> Path:
    """DVS words (x = i % 240, jAER y = 5, ON) with the given raw 32-bit timestamps."""
    words = b"".join(struct.pack(">II", ((5 << 22) | ((i % 240) << 12) | (1 << 11)), ts)
                     for i, ts in enumerate(stamps))
    path.write_bytes(AEDAT2_HEADER + words)
    return path


def _both(path: Path) -> np.ndarray:
    """Read whole and streamed in 2-event chunks (the repair state crosses chunk borders)."""
    rec = read_events(path)
    streamed = np.concatenate(list(iter_events(path, chunk_events=2)))
    np.testing.assert_array_equal(streamed, rec.events)
    return rec.events


def _raises_at(path: Path, record: int, offset: int) -> None:
    for read in (read_events, lambda p: list(iter_events(p, chunk_events=2))):
        with pytest.raises(EventFormatError, match="implausible") as e:
            read(path)
        assert (e.value.record, e.value.offset) == (record, offset)
        assert str(path) in str(e.value)


def test_aedat2_genuine_int32_wrap_is_repaired(tmp_path: Path) -> None:
    top = (1 << 32) - 300
    t = _both(_aedat2(tmp_path / "wrap.aedat", [top - 100, top, 50, 400, 900]))
    assert t["t"].tolist() == [top - 100, top, (1 << 32) + 50, (1 << 32) + 400, (1 << 32) + 900]


@pytest.mark.parametrize("stamps,bad", [
    ([1000, 1100, 0xFFFFFF00, 1200, 1300], 2),  # a flipped high bit: a step of 71 min, no wrap
    ([3_000_000_000, 3_000_000_100, 0, 0, 3_000_000_200], 4),  # a zeroed run read as a wrap
])
def test_aedat2_implausible_repairs_name_the_record(tmp_path: Path, stamps, bad) -> None:
    path = _aedat2(tmp_path / "bad.aedat", stamps)
    _raises_at(path, bad, len(AEDAT2_HEADER) + 8 * bad)


def _nbin(path: Path, records: list[tuple[int, int, int]]) -> Path:
    """5-byte records (x, y, raw 23-bit t); y = 240 is an overflow record."""
    out = bytearray()
    for x, y, t in records:
        out += bytes([x, y, (t >> 16) & 0x7F, (t >> 8) & 0xFF, t & 0xFF])
    path.write_bytes(bytes(out))
    return path


def test_nmnist_genuine_overflow_is_repaired(tmp_path: Path) -> None:
    top = (1 << 23) - 10
    path = _nbin(tmp_path / "ok.bs2", [(1, 1, top - 5), (2, 2, top), (0, 240, 0), (3, 3, 20)])
    assert _both(path)["t"].tolist() == [top - 5, top, (1 << 23) + 20]


@pytest.mark.parametrize("records,bad", [
    # an overflow record where the counter did not wrap: 8.4 s added between two close events
    ([(1, 1, 1000), (2, 2, 1100), (0, 240, 0), (3, 3, 1200)], 3),
    # two overflow records with no event between them: over 8.4 s of silence
    ([(1, 1, 1000), (2, 2, 8_000_000), (0, 240, 0), (0, 240, 0), (3, 3, 10)], 4),
])
def test_nmnist_implausible_overflow_records_name_the_record(tmp_path: Path, records, bad) -> None:
    path = _nbin(tmp_path / "bad.bs2", records)
    _raises_at(path, bad, 5 * bad)


def _aedat31(path: Path, packets: list[tuple[int, list[int]]]) -> tuple[Path, list[int]]:
    """Polarity packets (overflow count, raw timestamps); returns the path and the byte offset
    of each packet's first event."""
    head = b"#!AER-DAT3.1\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
    out, firsts = bytearray(head), []
    for ovf, stamps in packets:
        out += struct.pack("<hhiiiiii", 1, 1, 8, 4, ovf, len(stamps), len(stamps), len(stamps))
        firsts.append(len(out))
        for i, ts in enumerate(stamps):
            out += struct.pack("<Ii", (i << 17) | (3 << 2) | 1, ts)
    path.write_bytes(bytes(out))
    return path, firsts


def test_aedat31_forged_overflow_count_names_the_record(tmp_path: Path) -> None:
    near = (1 << 31) - 50
    path, _ = _aedat31(tmp_path / "ok.aedat", [(0, [near - 10, near]), (1, [5, 9])])
    assert _both(path)["t"].tolist() == [near - 10, near, (1 << 31) + 5, (1 << 31) + 9]
    path, firsts = _aedat31(tmp_path / "bad.aedat", [(0, [100, 200]), (7, [300, 400])])
    _raises_at(path, 2, firsts[1])
