"""A reliable request/answer channel over a byte port: framing, a sliding window, an adaptive
retransmission timeout (RFC 6298 smoothing, Karn's rule) and go-back-N retransmission.

The device executes requests strictly in sequence order and answers each exactly once (a
retransmitted request is answered from its cache), so the channel only has to get every request
through and match answers by their ``ack``. NAKs that the channel cannot retry away are raised:
NOT_SYNCED as `DeviceRebooted` (the session recovers), others as `DeviceRefused`.

Dead peer: while requests are outstanding, a device that sends no byte (and, when the host is
writing, takes none) for `dead_after()` seconds, by default max(DEAD_RTOS x RTO, DEAD_MIN_S), is
reported as `DeviceSilent`; a port that fails or closes is reported at once as `LinkClosed`.
Once a retransmission timeout has passed in silence, the oldest request alone is sent again every
`dead_after() / DEAD_PROBES` seconds (probes, without backoff), so that a live device on a lossy
line is heard well within the bound: DEAD_PROBES probes must all be lost to call it dead.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import serial

from spikestream.firmware_bridge.link.errors import (
    DeviceRebooted,
    DeviceRefused,
    DeviceSilent,
    LinkClosed,
    LinkTimeout,
    ProtocolMismatch,
)
from spikestream.firmware_bridge.protocol import (
    FLAG_RESPONSE,
    SEQ_MOD,
    Deframer,
    Frame,
    FrameError,
    MsgType,
    Nak,
    NakReason,
    decode_frame,
    encode_frame,
    seq_diff,
)
from spikestream.firmware_bridge.transports import open_port

#: A device silent for this many retransmission timeouts (RTO without backoff) is dead ...
DEAD_RTOS = 8
#: ... but never sooner than this many seconds (a frame's line time, a stall).
DEAD_MIN_S = 1.0
#: ... after this many probes went unanswered in that time.
DEAD_PROBES = 16

#: The answer type each request expects (or a NAK).
ANSWER = {
    MsgType.HELLO: MsgType.CAPS,
    MsgType.LOAD_PARAMS: MsgType.OK,
    MsgType.LOAD_STATE: MsgType.OK,
    MsgType.COMMIT: MsgType.OK,
    MsgType.RESET_STATE: MsgType.OK,
    MsgType.STEP: MsgType.STEP_RESULT,
    MsgType.READ_STATE: MsgType.STATE_DATA,
    MsgType.PING: MsgType.PONG,
}


@dataclass
class LinkStats:
    """Counters of one Link."""

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmits: int = 0  # frames sent again
    lost: int = 0  # losses detected (a timeout, a NAK for a gap, or a missing answer)
    naks: int = 0
    corrupt: int = 0  # received frames that failed COBS/CRC checks
    duplicates: int = 0  # answers to frames no longer outstanding
    resets_recovered: int = 0
    checkpoints: int = 0
    steps: int = 0  # timesteps delivered to the caller
    replayed: int = 0  # timesteps sent again after a reboot


@dataclass
class _Out:
    index: int
    seq: int
    type: int
    raw: bytes
    first_sent: float
    last_sent: float
    tries: int = 0  # consecutive timeouts while oldest
    gap_resent: bool = False
    resent: bool = False


class FrameChannel:
    """Requests out, answers back, over one port. `window` (frames in flight) is set by the
    session after the handshake; `timeout` is the least retransmission timeout in seconds;
    `max_retries` the consecutive timeouts before LinkTimeout; `dead_after` fixes the dead-peer
    bound in seconds (default: adapts with the RTO, see the module docstring)."""

    def __init__(
        self,
        port: str | serial.SerialBase,
        *,
        timeout: float,
        max_retries: int,
        baudrate: int = 115200,
        first_seq: int | None = None,
        stats: LinkStats | None = None,
        dead_after: float | None = None,
    ) -> None:
        if dead_after is not None and dead_after <= 0:
            raise ValueError(f"dead_after {dead_after} must be positive")
        self.timeout, self.max_retries, self._dead_after = timeout, max_retries, dead_after
        if isinstance(port, str):
            try:
                self.serial = open_port(port, baudrate)
            except (serial.SerialException, ValueError) as e:
                raise LinkClosed(f"cannot open {port}: {e}") from e
            self._own = True
        else:
            self.serial = port
            self.serial.timeout = 0
            self._own = False
        self.port = getattr(self.serial, "portstr", None) or str(port)
        try:
            self._fileno: int | None = self.serial.fileno()
        except (AttributeError, OSError, serial.SerialException):
            self._fileno = None
        self.serial.reset_input_buffer()
        self.stats = stats if stats is not None else LinkStats()
        self.window = 1
        self._deframer = Deframer()
        if first_seq is None:  # random: no overlap with the sequence numbers of a past session
            first_seq = int.from_bytes(os.urandom(2), "little")
        self.seq = (first_seq - 1) % SEQ_MOD  # the last sequence number used
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._gbn_at = -1.0
        self._heard = 0.0  # when the last byte arrived

    def close(self) -> None:
        """Close the port if the channel opened it (a caller's port stays the caller's)."""
        if self._own and self.serial.is_open:
            self.serial.close()

    # ---- the windowed exchange -------------------------------------------------------------

    def rto(self, tries: int = 0) -> float:
        """Retransmission timeout after `tries` consecutive timeouts (doubling up to 4x)."""
        base = self.timeout
        if self._srtt is not None:
            base = max(base, 1.5 * self._srtt + 4 * self._rttvar)
        return base * (1 << min(tries, 2))

    def dead_after(self) -> float:
        """Seconds of silence, with requests outstanding, after which the device is dead."""
        if self._dead_after is not None:
            return self._dead_after
        return max(DEAD_RTOS * self.rto(0), DEAD_MIN_S)

    def exchange(
        self,
        requests: Sequence[tuple[int, bytes]],
        on_reply: Callable[[int, Frame], None] | None = None,
    ) -> list[Frame]:
        """Send requests in a sliding window; returns their answers in order. Retransmits on
        timeout, on a NAK for a gap, and when a later answer shows an earlier one was lost.
        `on_reply(index, frame)` sees each answer as it arrives."""
        n = len(requests)
        replies: list[Frame | None] = [None] * n
        outstanding: dict[int, _Out] = {}
        nxt = done = 0
        started = time.monotonic()  # silence before this exchange does not count
        while done < n:
            # at most `window` frames in flight, and none more than `window - 1` past the oldest
            # unanswered one: the device caches 2 x window answers, so an answer lost while
            # later ones keep coming must still be in its cache when the request is resent
            while nxt < n and len(outstanding) < self.window and (
                    not outstanding or nxt - next(iter(outstanding.values())).index < self.window):
                mtype, payload = requests[nxt]
                self.seq = seq = (self.seq + 1) % SEQ_MOD
                raw = encode_frame(Frame(mtype, seq, 0, 0, payload))
                now = time.monotonic()
                outstanding[seq] = _Out(nxt, seq, mtype, raw, now, now)
                self._write(raw)
                nxt += 1
            oldest = next(iter(outstanding.values()))
            # Silent since a timeout resent the oldest: probe it, without backoff.
            probing = oldest.tries > 0 and self._heard < oldest.last_sent
            if probing:
                deadline = oldest.last_sent + self.dead_after() / DEAD_PROBES
            else:
                deadline = oldest.last_sent + self.rto(oldest.tries)
            dead_at = max(self._heard, started) + self.dead_after()
            frames = self._poll(min(deadline, dead_at))
            if not frames and time.monotonic() >= dead_at:
                quiet = time.monotonic() - max(self._heard, started)
                raise DeviceSilent(
                    f"{self.port}: the device sent nothing for {quiet:.2f} s with "
                    f"{MsgType(oldest.type).name} (seq {oldest.seq}) unanswered: dead or hung "
                    f"(dead-peer bound {self.dead_after():.2f} s)"
                )
            for f in frames:
                o = self._match(f, outstanding)
                if o is None:
                    continue
                del outstanding[o.seq]
                if on_reply is not None:
                    on_reply(o.index, f)
                replies[o.index] = f
                done += 1
                for older in outstanding.values():  # answers are sent in order: these were lost
                    if seq_diff(older.seq, o.seq) >= 0:
                        break
                    if not older.gap_resent:
                        older.gap_resent = True
                        self.stats.lost += 1
                        self._resend(older)
            if not frames and outstanding and time.monotonic() >= deadline:
                oldest = next(iter(outstanding.values()))
                if probing:
                    self._resend(oldest)
                    continue
                oldest.tries += 1
                self.stats.lost += 1
                if oldest.tries > self.max_retries:
                    raise LinkTimeout(
                        f"{self.port}: no answer to {MsgType(oldest.type).name} "
                        f"(seq {oldest.seq}) after {oldest.tries} tries, "
                        f"{time.monotonic() - oldest.first_sent:.2f} s"
                    )
                for o in list(outstanding.values()):  # go back N: the device drops duplicates
                    self._resend(o)
        return replies  # type: ignore[return-value]

    def _match(self, f: Frame, outstanding: dict[int, _Out]) -> _Out | None:
        """The outstanding request `f` answers, or None (NAKs act here)."""
        if not f.flags & FLAG_RESPONSE:
            return None
        o = outstanding.get(f.ack)
        if f.type == MsgType.NAK:
            self.stats.naks += 1
            try:
                nak = Nak.unpack(f.payload)
            except FrameError:
                self.stats.corrupt += 1
                return None
            if nak.reason == NakReason.CORRUPT:
                return None  # our frame was damaged: the gap NAK or the timer resends it
            if nak.reason == NakReason.OUT_OF_ORDER:
                now = time.monotonic()
                if outstanding and now - self._gbn_at > 0.5 * self.rto(0):
                    self._gbn_at = now
                    self.stats.lost += 1
                    for x in list(outstanding.values()):
                        self._resend(x)
                return None
            if o is None:
                return None  # about a frame already settled
            if nak.reason == NakReason.NOT_SYNCED:
                raise DeviceRebooted(nak.boot_counter)
            raise DeviceRefused(nak.reason, nak.detail, MsgType(o.type).name)
        if o is None:
            self.stats.duplicates += 1
            return None
        if f.type != ANSWER.get(MsgType(o.type)):
            raise ProtocolMismatch(
                f"{MsgType(o.type).name} answered with message type 0x{f.type:02x}"
            )
        if not o.resent:  # Karn: time only frames sent once
            rtt = time.monotonic() - o.first_sent
            if self._srtt is None:
                self._srtt, self._rttvar = rtt, rtt / 2
            else:
                self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
                self._srtt = 0.875 * self._srtt + 0.125 * rtt
        return o

    def _resend(self, o: _Out) -> None:
        o.last_sent = time.monotonic()
        o.resent = True
        self.stats.retransmits += 1
        self._write(o.raw)

    # ---- bytes -----------------------------------------------------------------------------

    def _write(self, raw: bytes) -> None:
        """Write a frame; a device that takes no byte for `dead_after()` s is DeviceSilent."""
        try:
            if self._fileno is None:
                self.serial.write(raw)
            else:
                self._write_fd(raw)
        except (serial.SerialException, OSError) as e:
            raise LinkClosed(f"{self.port}: write failed: {e}") from e
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(raw)

    def _write_fd(self, raw: bytes) -> None:
        # pyserial's own write waits forever on a full buffer (no write_timeout), and setting one
        # reconfigures the port; its ports are non-blocking, so write the descriptor here.
        assert self._fileno is not None
        view = memoryview(raw)
        moved = time.monotonic()
        while view:
            try:
                view = view[os.write(self._fileno, view) :]
                moved = time.monotonic()
                continue
            except BlockingIOError:
                pass
            limit = self.dead_after()
            left = moved + limit - time.monotonic()
            if left <= 0:
                raise DeviceSilent(
                    f"{self.port}: the device took no bytes for {limit:.2f} s: dead or hung "
                    f"(dead-peer bound {limit:.2f} s)"
                )
            select.select([], [self._fileno], [], left)

    def _poll(self, deadline: float) -> list[Frame]:
        """Frames received before `deadline` (returns as soon as at least one arrived)."""
        frames: list[Frame] = []
        while True:
            wait = deadline - time.monotonic()
            try:
                if self._fileno is not None:
                    r, _, _ = select.select([self._fileno], [], [], max(0.0, wait))
                    data = self.serial.read(1 << 16) if r else b""
                else:
                    data = self.serial.read(1 << 16)
                    if not data and wait > 0:
                        time.sleep(min(wait, 0.0005))
            except (serial.SerialException, OSError) as e:
                raise LinkClosed(f"{self.port}: read failed: {e}") from e
            if data:
                self._heard = time.monotonic()
                self.stats.bytes_received += len(data)
                for raw in self._deframer.feed(data):
                    try:
                        frames.append(decode_frame(raw))
                        self.stats.frames_received += 1
                    except FrameError:
                        self.stats.corrupt += 1
                if frames:
                    return frames
            if time.monotonic() >= deadline:
                return frames
