"""AEDAT 3.1 (cAER; the original DVS128 Gesture release): our own decoder.

Tonic 1.7's `read_dvs_ibm` raises on every file (`read_aedat_header_from_file` returns three
values where it unpacks two: "too many values to unpack"; its packet loop also reads `capacity`
8-byte events whatever the packet's event size and type), so we decode the format ourselves,
following the cAER specification:

- text header lines starting with `#`, the first `#!AER-DAT3.1`, the last `#!END-HEADER`;
- then packets, each a 28-byte little-endian header `eventType:i16, eventSource:i16,
  eventSize:i32, eventTSOffset:i32, eventTSOverflow:i32, eventCapacity:i32, eventNumber:i32,
  eventValid:i32` followed by `eventCapacity * eventSize` bytes of events;
- polarity events (type 1) are 8 bytes: a 32-bit word (bit 0 valid, bit 1 polarity, bits 2-16 y,
  bits 17-31 x) and an int32 timestamp; the full timestamp is `eventTSOverflow << 31 | ts`
  (a step over 2^31 µs between events, e.g. a corrupt overflow count, is an error).
Other packet types (special, frame, IMU, ...) are skipped; invalid events (valid bit 0) dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.textheader import aedat_version, read_text_header
from spikestream.datasets.timestamps import MAX_STEP_32BIT_US, check_steps
from spikestream.events import EVENT_DTYPE, EventFormatError, SensorSize

HEADER = np.dtype(
    [("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"),
     ("ts_overflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")]
)
POLARITY_EVENT = 1
_POLARITY = np.dtype([("data", "<u4"), ("ts", "<i4")])

#: cAER source names -> (width, height) of the sensor.
SOURCES: dict[str, tuple[int, int]] = {
    "DVS128": (128, 128),
    "DAVIS240": (240, 180),
    "DAVIS346": (346, 260),
    "DVXPLORER": (640, 480),
}


def parse_header(path: Path) -> tuple[int, list[str]]:
    """Byte offset after `#!END-HEADER`, and the header lines (without `#` and line ends)."""
    return read_text_header(path, b"#", end="!END-HEADER", end_required=True)


def source_size(lines: list[str]) -> tuple[str | None, tuple[int, int] | None]:
    """The first `#Source N: NAME` line's name and its sensor size, when known."""
    for ln in lines:
        if ln.startswith("Source") and ":" in ln:
            name = ln.split(":", 1)[1].strip()
            for key, size in SOURCES.items():
                if key in name.upper():
                    return name, size
            return name, None
    return None, None


def decode_polarity(block: bytes, number: int, overflow: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode the first `number` polarity events of a packet; returns events and the indices of the
    valid ones inside the packet."""
    raw = np.frombuffer(block, dtype=_POLARITY, count=number)
    data = raw["data"]
    keep = np.flatnonzero(data & 1)
    d = data[keep]
    ev = np.empty(len(keep), dtype=EVENT_DTYPE)
    ev["x"] = (d >> 17) & 0x7FFF
    ev["y"] = (d >> 2) & 0x7FFF
    ev["p"] = (d >> 1) & 1
    ev["t"] = (np.int64(overflow) << 31) | raw["ts"][keep].astype(np.int64)
    return ev, keep


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size (None when the source is unknown), packets with byte offsets, metadata."""
    start, lines = parse_header(path)
    if not lines or not lines[0].startswith("!AER-DAT3.1"):
        raise EventFormatError(path, "not an AEDAT 3.1 file", offset=0, expected="#!AER-DAT3.1")
    name, wh = source_size(lines)
    file_size = path.stat().st_size

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        pos = start
        n, last_t = 0, None
        with open(path, "rb") as f:
            f.seek(start)
            while pos < file_size:
                hb = f.read(HEADER.itemsize)
                if len(hb) < HEADER.itemsize:
                    raise EventFormatError(path, f"truncated packet header ({len(hb)} bytes)",
                                           offset=pos, expected="a 28-byte packet header")
                h = np.frombuffer(hb, dtype=HEADER)[0]
                size, cap, num = int(h["size"]), int(h["capacity"]), int(h["number"])
                valid, ovf = int(h["valid"]), int(h["ts_overflow"])
                if size <= 0 or cap < 0 or not (0 <= valid <= num <= cap) or ovf < 0:
                    raise EventFormatError(
                        path, f"packet header size={size} capacity={cap} number={num} "
                        f"valid={valid} overflow={ovf}", offset=pos,
                        expected="eventSize > 0, 0 <= valid <= number <= capacity")
                nbytes = size * cap
                body_at = pos + HEADER.itemsize
                if nbytes > file_size - body_at:
                    raise EventFormatError(
                        path, f"packet claims {nbytes} bytes but {file_size - body_at} remain",
                        offset=pos, expected="a packet body inside the file")
                if int(h["type"]) != POLARITY_EVENT:
                    f.seek(nbytes, 1)
                    pos = body_at + nbytes
                    continue
                if size != _POLARITY.itemsize or int(h["ts_offset"]) != 4:
                    raise EventFormatError(
                        path, f"polarity packet with eventSize={size}, "
                        f"eventTSOffset={int(h['ts_offset'])}", offset=pos,
                        expected="eventSize 8 and eventTSOffset 4")
                body = f.read(nbytes)
                ev, keep = decode_polarity(body, num, ovf)
                neg = np.flatnonzero(ev["t"] < (np.int64(ovf) << 31))
                if neg.size:
                    raise EventFormatError(path, "negative 32-bit timestamp",
                                           offset=body_at + int(keep[neg[0]]) * 8 + 4,
                                           expected="int32 timestamp >= 0")
                pos = body_at + nbytes
                if len(ev):
                    offs = body_at + keep.astype(np.int64) * _POLARITY.itemsize
                    check_steps(path, ev["t"], last_t, MAX_STEP_32BIT_US, first=n, offsets=offs)
                    n, last_t = n + len(ev), int(ev["t"][-1])
                    yield ev, offs

    meta: dict[str, Any] = {"source": name, "header_bytes": start}
    return ((wh[0], wh[1], 2) if wh else None), packets(), meta


register_format(Format(
    "aedat3", (".aedat", ".aedat3"), "#!AER-DAT3.1", "own (cAER spec)", "packet by packet",
    open=open_source, sniff=lambda path, head: aedat_version(path, head) == "3.1"))
