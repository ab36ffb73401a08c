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
import time
from collections.abc import Iterator

import numpy as np

from spikestream import SensorSize, as_events, empty_events

from .base import EventSource
from .resync import MAX_TIME_JUMP_US, Held, Probation, SequenceTracker, TimeTracker
from .udp_format import (
    AESTREAM_DATAGRAM,
    DEFAULT_DATAGRAM,
    FLAG_END,
    FORMATS,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_COORD,
    RECORD_DTYPE,
    RECORD_SIZE,
    VERSION,
    PacketError,
    decode_aestream,
    decode_spikestream,
    encode_aestream,
    encode_spikestream,
)

__all__ = [
    "AESTREAM_DATAGRAM", "DEFAULT_DATAGRAM", "FLAG_END", "FORMATS", "HEADER", "HEADER_SIZE",
    "MAGIC", "MAX_COORD", "RECORD_DTYPE", "RECORD_SIZE", "VERSION", "PacketError", "UDPSink",
    "UDPSource", "decode_aestream", "decode_spikestream", "encode_aestream", "encode_spikestream",
]


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

    A datagram whose sequence number or time is far from the stream's (a forged or corrupted
    header) is refused as `sequence_jump` / `stale_sequence` or `time_jump` / `time_order`; the
    stream goes on from the datagrams that agree with it, and accepts a new base only when
    three consecutive datagrams agree on it (see `resync`; time then continues from the last
    delivered event). A forward step of time is plausible up to `max_time_jump_us` plus twice
    the wall-clock time that passed. The first base is taken the same way: the first
    datagrams are held until three agree (or the stream ends), so a forged first datagram is
    refused too (aestream words without timestamps, stamped on arrival, are not held).
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
        max_time_jump_us: int = MAX_TIME_JUMP_US,
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
        self.sequence = SequenceTracker()
        self.time = TimeTracker(max_jump_us=max_time_jump_us)
        self.probation = Probation(max_jump_us=max_time_jump_us)
        self._clock0 = 0.0
        self._ts_high = 0  # unwrapped high bits of aestream's 32-bit timestamps (accepted ones)
        self._ts_last: int | None = None

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
        self.sequence.reset()
        self.time.reset()
        self.probation.reset()
        self._clock0 = time.perf_counter()
        self._ts_high, self._ts_last = 0, None

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
                break
            ready, _, _ = select.select([sock], [], [], self.poll_s)
            parts: list[np.ndarray] = []
            if ready:
                for _ in range(self.max_datagrams_per_packet):
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        self._stop = True
                        break
                    parts += [ev for ev in self._accept(data) if len(ev)]
                    if self.ended:
                        break
            now = time.perf_counter()
            if parts:
                idle_since = now
                yield np.concatenate(parts) if len(parts) > 1 else parts[0]
            else:
                if self.idle_timeout_s is not None and now - idle_since >= self.idle_timeout_s:
                    break
                if not self.ended and not self._stop:
                    yield empty_events()
        # a stream that ends while its first datagrams are on probation delivers them
        rest = [ev for ev in self._settle(*self.probation.release()) if len(ev)]
        if rest:
            yield np.concatenate(rest)

    def _accept(self, data: bytes) -> list[np.ndarray]:
        """Validated events of one datagram, and of those it releases from probation; a
        rejected datagram is counted."""
        try:
            d = self._decode(data)
        except PacketError as e:
            n = len(data) // RECORD_SIZE if self.format == "spikestream" else len(data) // 4
            self.counters.reject(e.reason, events=max(0, n))
            return []
        if self.probation.confirmed or (self.format == "aestream" and d.extra is None):
            return self._settle([d], [])
        if isinstance(d.extra, _Stamps):  # unwrap after the chain it would join
            for _, chain in self.probation.chains:
                d.extra.rebase(chain[-1].extra.high, chain[-1].extra.last, d.events)
                if self.probation.disagrees(chain, d) is None:
                    break
            else:
                d.extra.rebase(self._ts_high, self._ts_last, d.events)
        released, refused = self.probation.offer(d)
        if (not self.probation.confirmed and isinstance(d.extra, int) and d.extra & FLAG_END
                and self.stop_on_end):  # the stream ends on probation: deliver what it has
            more, also = self.probation.release()
            released, refused = released + more, refused + also
        return self._settle(released, refused)

    def _settle(self, released: list[Held], refused: list[tuple[str, Held]]
                ) -> list[np.ndarray]:
        """Count the refused datagrams; admit the released ones, in order (the sequence
        numbers of datagrams refused on probation count as arrived between them)."""
        for why, h in refused:
            self.counters.reject(why, events=len(h.events))
        seen: list[int] = []
        if released:  # the base is set: the refused sequence numbers are placed once
            seen = self.probation.seen if released[0].seq is not None else []
            self.probation.seen = []
        out = []
        for i, d in enumerate(released):
            if i and d.seq is not None and seen:
                prev = released[i - 1].seq
                span = (d.seq - prev) % (1 << 32)  # type: ignore[operator]
                for s in sorted((s for s in seen if 0 < (s - prev) % (1 << 32) < span),
                                key=lambda s: (s - prev) % (1 << 32)):  # type: ignore[operator]
                    try:
                        self.counters.drops += self.sequence.arrived(s)
                    except PacketError:
                        pass
            ev = self._admit(d)
            if ev is not None:
                out.append(ev)
        return out

    def _admit(self, d: Held) -> np.ndarray | None:
        """Sequence and time checks of a datagram past probation; None if refused (counted)."""
        ev = d.events
        try:
            if d.seq is not None:
                resyncs = self.sequence.resyncs
                self.counters.drops += self.sequence.arrived(d.seq)
                if self.sequence.resyncs != resyncs:
                    self.time.trust_next()
            if len(ev):
                offset = self.time.accept(int(ev["t"][0]), int(ev["t"][-1]))
                if offset:
                    ev["t"] += offset
        except PacketError as e:
            self.counters.reject(e.reason, events=len(ev))
            return None
        if isinstance(d.extra, _Stamps):  # the unwrap goes on from accepted datagrams only
            self._ts_high, self._ts_last = d.extra.high, d.extra.last
        elif isinstance(d.extra, int) and d.extra & FLAG_END and self.stop_on_end:
            self.ended = True
        return ev

    def _decode(self, data: bytes) -> Held:
        if self.format == "spikestream":
            try:
                seq, flags, ev = decode_spikestream(data, self.sensor_size)
            except PacketError as e:
                if e.seq is not None and not self.probation.confirmed:
                    self.probation.note_arrived(e.seq)
                elif e.seq is not None:
                    try:  # it arrived, though its content is refused: not a loss
                        self.counters.drops += self.sequence.arrived(e.seq)
                    except PacketError:
                        pass  # stale as well; the content's reason is the one reported
                raise
            return Held(seq, ev, flags)
        ev, stamps = decode_aestream(data, self.sensor_size, self.timestamps)
        if stamps is None:
            ev["t"] = int((time.perf_counter() - self._clock0) * 1e6)
            return Held(None, ev, None)
        s = stamps.astype(np.int64)
        if len(s) > 1 and bool(np.any(np.diff(s) < 0)):
            wraps = np.diff(s) < -(1 << 31)
            if bool(np.any(np.diff(s)[~wraps] < 0)):
                raise PacketError("time_order", "timestamps go back inside the datagram")
            s = s + (np.r_[0, np.cumsum(wraps)] << 32)
        stamped = _Stamps(s)
        stamped.rebase(self._ts_high, self._ts_last, ev)
        return Held(None, ev, stamped)


class _Stamps:
    """aestream's 32-bit timestamps of one datagram (unwrapped inside it) and the high bits
    that continue them from a reference datagram (the 32-bit µs counter wraps every 71.6 min)."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw
        self.high = 0
        self.last = int(raw[-1])

    def rebase(self, high: int, last: int | None, ev: np.ndarray) -> None:
        """Continue from a datagram whose unwrapped times ended at `last` with `high`; sets the
        events' times."""
        if last is not None and int(self.raw[0]) + high < last - (1 << 31):
            high += 1 << 32
        self.high, self.last = high, int(self.raw[-1]) + high
        ev["t"] = self.raw + high


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
