"""Events over UDP: `UDPSource` receives and validates datagrams, `UDPSink` sends them.

Two wire formats (see docs/sources.md for the byte layouts):

- `"spikestream"` (default): a versioned 28-byte header (magic `SPKS`, version 1, flags, header
  length, sequence number, record count, sensor width and height, base time) followed by 8-byte
  records (time offset, x, y with the polarity in bit 15). The sequence number lets the
  receiver count lost datagrams; an END flag closes the stream.
- `"aestream"`: the 32-bit words that aestream and SpiNNaker's spif/spiffer send: bit 31 set
  when no timestamp follows, x in bits 30..16, polarity in bit 15, y in bits 14..0; with
  timestamps each word is followed by a 32-bit time in µs. Words are little-endian (aestream
  writes host order; x86 and ARM hosts are little-endian). Without timestamps the receiver
  stamps events with their arrival time.

Every datagram is validated (size, magic and version, coordinates inside the sensor, time
order within and across datagrams); a datagram that fails is dropped whole and counted in
`counters.malformed` with its reason. Garbage never raises.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np

from spikestream import EVENT_DTYPE, SensorSize, as_events, empty_events

from .base import EventSource

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


# -- source ----------------------------------------------------------------------------------
class UDPSource(EventSource):
    """Receives events on a UDP port (bound to 127.0.0.1 unless `host` says otherwise).

    `port=0` picks a free port (see `address`). For the aestream format, `timestamps` says
    whether words carry timestamps (None: read bit 31; False: ignore it, as aestream does).
    Each iteration step waits up to `poll_s` for datagrams, validates every one, and yields
    what arrived as one packet (empty if nothing did). Iteration ends on an END datagram
    (spikestream format, when `stop_on_end`), after `idle_timeout_s` without data, or when
    `stop()` is called from another thread. Lost datagrams (gaps in the sequence numbers)
    are counted in `counters.drops`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        sensor_size: SensorSize = (128, 128, 2),
        *,
        format: str = "spikestream",
        timestamps: bool | None = None,
        poll_s: float = 0.05,
        idle_timeout_s: float | None = None,
        stop_on_end: bool = True,
        max_datagrams_per_packet: int = 256,
        recv_buffer_bytes: int = 4 << 20,
    ) -> None:
        super().__init__(sensor_size)
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        self.host, self.port, self.format = host, int(port), format
        self.timestamps = timestamps
        self.poll_s = float(poll_s)
        self.idle_timeout_s = idle_timeout_s
        self.stop_on_end = stop_on_end
        self.max_datagrams_per_packet = int(max_datagrams_per_packet)
        self.recv_buffer_bytes = int(recv_buffer_bytes)
        self.ended = False
        self._sock: socket.socket | None = None
        self._stop = False
        self._expected_seq: int | None = None
        self._clock0 = 0.0
        self._ts_high = 0  # unwrapped high bits of aestream's 32-bit timestamps
        self._ts_last: int | None = None
        self._accepted_t: int | None = None  # last time delivered, across datagrams

    @property
    def address(self) -> tuple[str, int]:
        """`(host, port)` actually bound (opens the socket if needed)."""
        self.open()
        assert self._sock is not None
        addr = self._sock.getsockname()
        return str(addr[0]), int(addr[1])

    def _open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer_bytes)
        except OSError:
            pass  # the kernel caps the buffer; the default still works
        sock.bind((self.host, self.port))
        sock.setblocking(False)
        self._sock = sock
        self._stop = False
        self.ended = False
        self._expected_seq = None
        self._clock0 = time.perf_counter()
        self._ts_high, self._ts_last = 0, None
        self._accepted_t = None

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stop(self) -> None:
        """Ask a running iteration to end at its next poll (thread-safe)."""
        self._stop = True

    def _packets(self) -> Iterator[np.ndarray]:
        idle_since = time.perf_counter()
        while not self._stop and not self.ended:
            sock = self._sock
            if sock is None:
                return
            ready, _, _ = select.select([sock], [], [], self.poll_s)
            parts: list[np.ndarray] = []
            if ready:
                for _ in range(self.max_datagrams_per_packet):
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    ev = self._accept(data)
                    if ev is not None and len(ev):
                        parts.append(ev)
                    if self.ended:
                        break
            now = time.perf_counter()
            if parts:
                idle_since = now
                yield np.concatenate(parts) if len(parts) > 1 else parts[0]
            else:
                if self.idle_timeout_s is not None and now - idle_since >= self.idle_timeout_s:
                    return
                if not self.ended:
                    yield empty_events()

    def _accept(self, data: bytes) -> np.ndarray | None:
        """Validated events of one datagram, or None (counted) if it is rejected."""
        try:
            if self.format == "spikestream":
                ev = self._accept_spikestream(data)
            else:
                ev = self._accept_aestream(data)
        except PacketError as e:
            n = len(data) // RECORD_SIZE if self.format == "spikestream" else len(data) // 4
            self.counters.reject(e.reason, events=max(0, n))
            return None
        if len(ev):
            if self._accepted_t is not None and int(ev["t"][0]) < self._accepted_t:
                self.counters.reject("time_order", events=len(ev))
                return None
            self._accepted_t = int(ev["t"][-1])
        return ev

    def _accept_spikestream(self, data: bytes) -> np.ndarray:
        try:
            seq, flags, ev = decode_spikestream(data, self.sensor_size)
        except PacketError as e:
            if e.seq is not None:  # it arrived, though its content is refused: not a loss
                try:
                    self._sequence(e.seq)
                except PacketError:
                    pass  # stale as well; the content's reason is the one reported
            raise
        self._sequence(seq)
        if flags & FLAG_END and self.stop_on_end:
            self.ended = True
        return ev

    def _sequence(self, seq: int) -> None:
        """Count the datagrams missing before `seq`; refuse one older than expected."""
        if self._expected_seq is not None:
            gap = (seq - self._expected_seq) & 0xFFFFFFFF
            if gap >= 0x80000000:
                raise PacketError("stale_sequence", f"sequence {seq} is older than expected")
            self.counters.drops += gap
        self._expected_seq = (seq + 1) & 0xFFFFFFFF

    def _accept_aestream(self, data: bytes) -> np.ndarray:
        ev, stamps = decode_aestream(data, self.sensor_size, self.timestamps)
        if stamps is None:
            ev["t"] = int((time.perf_counter() - self._clock0) * 1e6)
            if self._accepted_t is not None:
                ev["t"] = max(int(ev["t"][0]), self._accepted_t)
            return ev
        s = stamps.astype(np.int64)
        if len(s) > 1 and bool(np.any(np.diff(s) < 0)):
            wraps = np.diff(s) < -(1 << 31)
            if bool(np.any(np.diff(s)[~wraps] < 0)):
                raise PacketError("time_order", "timestamps go back inside the datagram")
            s = s + (np.r_[0, np.cumsum(wraps)] << 32)
        high = self._ts_high
        if self._ts_last is not None and int(s[0]) + high < self._ts_last - (1 << 31):
            high += 1 << 32  # the 32-bit µs counter wrapped (every 71.6 minutes)
        t = s + high
        if self._ts_last is not None and int(t[0]) < self._ts_last:
            raise PacketError(
                "time_order", f"datagram starts at {int(t[0])} µs, before {self._ts_last} µs"
            )
        self._ts_high = high
        self._ts_last = int(t[-1])
        ev["t"] = t
        return ev


# -- sink ------------------------------------------------------------------------------------
class UDPSink:
    """Sends event packets as datagrams to `(host, port)` (127.0.0.1 unless told otherwise).

    Packets are split so that no datagram exceeds `max_datagram` bytes (1472 by default, 512
    for the aestream format as aestream uses). `close()` sends an END datagram in the
    spikestream format. Use as a context manager.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        sensor_size: SensorSize = (128, 128, 2),
        *,
        format: str = "spikestream",
        timestamps: bool = True,
        max_datagram: int | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        if port <= 0:
            raise ValueError(f"give the receiver's port, got {port}")
        self.address = (host, int(port))
        self.sensor_size = tuple(int(s) for s in sensor_size)
        if max(self.sensor_size[:2]) > MAX_COORD + 1:
            raise ValueError(f"sensor {self.sensor_size} exceeds the formats' 15-bit coordinates")
        self.format = format
        self.timestamps = timestamps
        default = DEFAULT_DATAGRAM if format == "spikestream" else AESTREAM_DATAGRAM
        self.max_datagram = int(max_datagram or default)
        if format == "spikestream":
            per = (self.max_datagram - HEADER_SIZE) // RECORD_SIZE
        else:
            per = self.max_datagram // (8 if timestamps else 4)
        if per < 1:
            raise ValueError(f"max_datagram {self.max_datagram} holds no event")
        self.events_per_datagram = per
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock: socket.socket | None = socket.socket(family, socket.SOCK_DGRAM)
        self.seq = 0
        self.datagrams = 0
        self.events = 0

    def send(self, events: np.ndarray) -> int:
        """Send one packet (split into datagrams); returns the number of datagrams sent."""
        if self._sock is None:
            raise RuntimeError("the sink is closed")
        ev = as_events(events)
        sent = 0
        for i in range(0, len(ev), self.events_per_datagram):
            chunk = ev[i : i + self.events_per_datagram]
            self.send_raw(self._encode(chunk))
            sent += 1
            self.events += len(chunk)
        return sent

    def send_raw(self, data: bytes) -> None:
        """Send bytes as one datagram as they are (also used to test receivers with garbage)."""
        if self._sock is None:
            raise RuntimeError("the sink is closed")
        self._sock.sendto(data, self.address)
        self.datagrams += 1

    def _encode(self, chunk: np.ndarray, flags: int = 0) -> bytes:
        if self.format == "aestream":
            return encode_aestream(chunk, timestamps=self.timestamps)
        data = encode_spikestream(chunk, self.sensor_size, self.seq, flags=flags)  # type: ignore[arg-type]
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return data

    def close(self) -> None:
        """Send END (spikestream format) and close the socket; idempotent."""
        if self._sock is None:
            return
        try:
            if self.format == "spikestream":
                self.send_raw(self._encode(empty_events(), flags=FLAG_END))
        finally:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> UDPSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
