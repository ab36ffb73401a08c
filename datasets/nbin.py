"""N-MNIST / N-Caltech101 binary files (`.bin`, `.bs2`): our own vectorised decoder.

Each event is 5 bytes: x (byte 0), y (byte 1), polarity (bit 7 of byte 2) and a 23-bit timestamp
in µs (bits 0-6 of byte 2, bytes 3 and 4, big-endian). A record with y == 240 marks an overflow
of the 23-bit timestamp counter and carries no event: every later timestamp gains 2^23 µs.
A step over 2^23 µs between events (an overflow record where the counter did not wrap, or two
with no event between them: 8.4 s of silence in a saccade recording) is an error naming the
record. (Tonic's `read_mnist_file`, after Orchard's `eventvision.py`, adds 2^13 per overflow
record; that cannot be the wrap of a 23-bit counter, and the real N-MNIST / N-Caltech101
samples have no overflow records, so both agree on every real file.) There is no header, hence
no magic: the format is recognised by extension, and the sensor size is 34x34 (N-MNIST) when
every event fits, otherwise inferred from the events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.timestamps import check_steps
from spikestream.events import EVENT_DTYPE, EventFormatError, SensorSize

RECORD = 5
OVERFLOW_Y = 240
OVERFLOW_US = 1 << 23
NMNIST_SIZE = (34, 34)


def decode(raw: np.ndarray, overflows_before: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode whole records (uint8 array, length a multiple of 5); returns events, the record
    indices they came from, and the overflow count after the block."""
    rec = raw.reshape(-1, RECORD)
    y = rec[:, 1]
    is_ovf = y == OVERFLOW_Y
    n_ovf = np.cumsum(is_ovf) + overflows_before
    keep = np.flatnonzero(~is_ovf)
    r = rec[keep].astype(np.int64)
    ev = np.empty(len(keep), dtype=EVENT_DTYPE)
    ev["x"] = r[:, 0]
    ev["y"] = r[:, 1]
    ev["p"] = r[:, 2] >> 7
    ev["t"] = (((r[:, 2] & 0x7F) << 16) | (r[:, 3] << 8) | r[:, 4]) + n_ovf[keep] * OVERFLOW_US
    total = int(n_ovf[-1]) if len(n_ovf) else overflows_before
    return ev, keep, total


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Packets with byte offsets; the sensor size is left to the caller's scan (None)."""
    size = path.stat().st_size
    if size % RECORD:
        bad = size // RECORD * RECORD
        raise EventFormatError(path, f"truncated: {size - bad} stray bytes after the last record",
                               offset=bad, record=size // RECORD, expected="5-byte records")

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        ovf = 0
        pos = n = 0
        last_t: int | None = None
        with open(path, "rb") as f:
            while True:
                buf = f.read(chunk_events * RECORD)
                if not buf:
                    return
                ev, keep, ovf = decode(np.frombuffer(buf, dtype=np.uint8), ovf)
                offs = pos + keep.astype(np.int64) * RECORD
                check_steps(path, ev["t"], last_t, OVERFLOW_US, first=n, offsets=offs,
                            records=offs // RECORD)
                if len(ev):
                    last_t = int(ev["t"][-1])
                n += len(ev)
                yield ev, offs
                pos += len(buf)

    return None, packets(), {}


def size_from_extent(max_x: int, max_y: int) -> tuple[int, int]:
    """34x34 (N-MNIST) when every event fits, else the smallest size holding the events."""
    if max_x < NMNIST_SIZE[0] and max_y < NMNIST_SIZE[1]:
        return NMNIST_SIZE
    return max_x + 1, max_y + 1


register_format(Format(
    "nbin", (".bin", ".bs2"), "none (by extension)", "own (vectorised)", "chunked reads",
    open=open_source, size_from_extent=size_from_extent))
