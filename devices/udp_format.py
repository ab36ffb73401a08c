"""The two UDP wire formats: constants, encoders, and decoders that validate each datagram.

See docs/sources.md for the byte layouts. Decoders raise `PacketError` whose `reason` is the key
under which a source counts the datagram as malformed.
"""

from __future__ import annotations

import struct

import numpy as np

from spikestream import EVENT_DTYPE, SensorSize, as_events

MAGIC = b"SPKS"
VERSION = 1
FLAG_END = 0x01
HEADER = struct.Struct("<4sBBHIIHHq")  # magic, version, flags, header length, seq, count, W, H, t0
HEADER_SIZE = HEADER.size  # 28
RECORD_DTYPE = np.dtype([("dt", "<u4"), ("x", "<u2"), ("yp", "<u2")])
RECORD_SIZE = RECORD_DTYPE.itemsize  # 8
FORMATS = ("spikestream", "aestream")
MAX_COORD = 0x7FFF  # 15 bits for x and y in both formats

#: Datagram size that avoids IP fragmentation on a 1500-byte Ethernet MTU.
DEFAULT_DATAGRAM = 1472
#: aestream's sender and receiver use 512-byte datagrams.
AESTREAM_DATAGRAM = 512


class PacketError(ValueError):
    """A datagram that does not follow the format; `reason` is a short key for the counters."""

    def __init__(self, reason: str, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.seq = seq  # the datagram's sequence number, when its header was sound


# -- encoding --------------------------------------------------------------------------------
def encode_spikestream(
    events: np.ndarray, sensor_size: SensorSize, seq: int, *, flags: int = 0
) -> bytes:
    """One datagram in the spikestream format (events must span less than 2**32 µs)."""
    ev = as_events(events)
    t0 = int(ev["t"][0]) if len(ev) else 0
    dt = ev["t"] - t0
    if len(ev) and int(dt.max()) > 0xFFFFFFFF:
        raise ValueError("events of one datagram must span less than 2**32 µs")
    rec = np.empty(len(ev), dtype=RECORD_DTYPE)
    rec["dt"] = dt
    rec["x"] = ev["x"]
    rec["yp"] = ev["y"].astype(np.uint16) | (ev["p"].astype(np.uint16) << 15)
    head = HEADER.pack(
        MAGIC,
        VERSION,
        flags,
        HEADER_SIZE,
        seq & 0xFFFFFFFF,
        len(ev),
        int(sensor_size[0]),
        int(sensor_size[1]),
        t0,
    )
    return head + rec.tobytes()


def encode_aestream(events: np.ndarray, *, timestamps: bool = False) -> bytes:
    """One datagram of aestream/spif words (with a 32-bit µs timestamp after each if asked)."""
    ev = as_events(events)
    word = (
        (ev["x"].astype(np.uint32) & MAX_COORD) << 16
        | (ev["p"].astype(np.uint32) << 15)
        | (ev["y"].astype(np.uint32) & MAX_COORD)
    )
    if not timestamps:
        return (word | np.uint32(0x80000000)).astype("<u4").tobytes()
    out = np.empty(2 * len(ev), dtype="<u4")
    out[0::2] = word
    out[1::2] = (ev["t"] & 0xFFFFFFFF).astype(np.uint32)
    return out.tobytes()


# -- decoding --------------------------------------------------------------------------------
def decode_spikestream(data: bytes, sensor_size: SensorSize) -> tuple[int, int, np.ndarray]:
    """`(seq, flags, events)` of one datagram; raises `PacketError` if it is malformed."""
    if len(data) < HEADER_SIZE:
        raise PacketError("short", f"{len(data)} bytes, less than the {HEADER_SIZE}-byte header")
    magic, version, flags, hlen, seq, count, w, h, t0 = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PacketError("magic", f"magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise PacketError("version", f"version {version}, this receiver knows {VERSION}")
    if flags & ~FLAG_END:
        raise PacketError("flags", f"reserved flag bits set: {flags:#04x}")
    if hlen != HEADER_SIZE:
        raise PacketError("header_length", f"header length {hlen}, expected {HEADER_SIZE}")
    if len(data) != HEADER_SIZE + RECORD_SIZE * count:
        raise PacketError(
            "length",
            f"{len(data)} bytes for {count} records, expected {HEADER_SIZE + RECORD_SIZE * count}",
        )
    try:
        return seq, flags, _spikestream_events(data, sensor_size, count, w, h, t0)
    except PacketError as e:
        e.seq = seq
        raise


def _spikestream_events(
    data: bytes, sensor_size: SensorSize, count: int, w: int, h: int, t0: int
) -> np.ndarray:
    if (w, h) != (int(sensor_size[0]), int(sensor_size[1])):
        raise PacketError(
            "sensor", f"sensor {w}x{h}, this source expects {sensor_size[0]}x{sensor_size[1]}"
        )
    if not 0 <= t0 < (1 << 62):
        raise PacketError("time", f"base time {t0} µs outside 0..2**62")
    rec = np.frombuffer(data, dtype=RECORD_DTYPE, offset=HEADER_SIZE, count=count)
    ev = np.empty(count, dtype=EVENT_DTYPE)
    ev["x"] = rec["x"]
    ev["y"] = rec["yp"] & MAX_COORD
    ev["p"] = rec["yp"] >> 15
    ev["t"] = t0 + rec["dt"].astype(np.int64)
    _check_events(ev, sensor_size)
    return ev


def decode_aestream(
    data: bytes, sensor_size: SensorSize, timestamps: bool | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """`(events with t unset, 32-bit timestamps or None)`; raises `PacketError` if malformed.

    `timestamps=None` reads bit 31 of the first word (set: no timestamps) and requires every
    word to agree; `False` takes every word as an event whatever bit 31 says (as aestream's
    receiver does); `True` expects (event, timestamp) word pairs.
    """
    if len(data) == 0:
        raise PacketError("empty", "empty datagram")
    if len(data) % 4:
        raise PacketError("length", f"{len(data)} bytes, not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4")
    if timestamps is False:
        ev_words, stamps = words, None
    elif timestamps is None and bool(words[0] >> 31):
        if not bool(np.all(words >> 31)):
            raise PacketError("mixed_timestamps", "some words lack the no-timestamp bit")
        ev_words, stamps = words, None
    else:
        if len(words) % 2:
            raise PacketError("length", "timestamped datagram with an odd number of words")
        ev_words, stamps = words[0::2], words[1::2]
        if bool(np.any(ev_words >> 31)):
            raise PacketError("mixed_timestamps", "an event word without its timestamp")
    ev = np.zeros(len(ev_words), dtype=EVENT_DTYPE)
    ev["x"] = (ev_words >> 16) & MAX_COORD
    ev["y"] = ev_words & MAX_COORD
    ev["p"] = (ev_words >> 15) & 1
    _check_coordinates(ev, sensor_size)
    return ev, stamps


def _check_coordinates(ev: np.ndarray, sensor_size: SensorSize) -> None:
    w, h = int(sensor_size[0]), int(sensor_size[1])
    bad = np.flatnonzero((ev["x"] >= w) | (ev["y"] >= h))
    if bad.size:
        e = ev[int(bad[0])]
        raise PacketError(
            "coordinates",
            f"{bad.size} events outside the {w}x{h} sensor, first (x={e['x']}, y={e['y']})",
        )


def _check_events(ev: np.ndarray, sensor_size: SensorSize) -> None:
    _check_coordinates(ev, sensor_size)
    if len(ev) > 1 and bool(np.any(np.diff(ev["t"]) < 0)):
        raise PacketError("time_order", "timestamps go back inside the datagram")
