"""Host side of the device link: handshake, parameter upload, windowed STEP traffic with
retransmission, and recovery from device reboots, over any pyserial port.

``Link("/dev/ttyACM0")``, ``Link("/dev/pts/7")``, ``Link("socket://127.0.0.1:5555")`` and
``Link("spikeemu://?faults=drop=0.1&seed=1")`` run the same code.

Reliability (docs/protocol.md): frames go out in a sliding window; the device applies them
strictly in sequence order and caches its answers, so a retransmitted frame is answered from the
cache and never applied twice. A reboot (NAK NOT_SYNCED, or a new boot counter) is recovered by
handshaking, re-uploading the parameters, restoring the last state checkpoint (READ_STATE
snapshots taken every `checkpoint_every` timesteps) and replaying the inputs since; replayed
outputs must equal the ones already received.
"""

from __future__ import annotations

import os
import select
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import serial

from spikestream.firmware_bridge.intcore import ARITH_ID, CoreParams
from spikestream.firmware_bridge.protocol import (
    CHUNK,
    COMMIT,
    FLAG_RESPONSE,
    HELLO,
    PROTOCOL_VERSION,
    READ_STATE,
    SEQ_MOD,
    STATE_DATA,
    STEP_HEAD,
    STEP_WANT_STATE_CRC,
    TARGET_PARAMS,
    TARGET_RESET,
    TARGET_STATE,
    Caps,
    Deframer,
    Frame,
    FrameError,
    MsgType,
    Nak,
    NakReason,
    bytes_per_step,
    decode_frame,
    encode_frame,
    seq_diff,
)
from spikestream.firmware_bridge.transports import register_url_scheme

_ANSWER = {
    MsgType.HELLO: MsgType.CAPS,
    MsgType.LOAD_PARAMS: MsgType.OK,
    MsgType.LOAD_STATE: MsgType.OK,
    MsgType.COMMIT: MsgType.OK,
    MsgType.RESET_STATE: MsgType.OK,
    MsgType.STEP: MsgType.STEP_RESULT,
    MsgType.READ_STATE: MsgType.STATE_DATA,
    MsgType.PING: MsgType.PONG,
}


class LinkError(Exception):
    """The link to the device failed and could not recover."""


class LinkTimeout(LinkError):
    """The device stopped answering (after all retransmissions)."""


class LinkClosed(LinkError):
    """The port failed or closed under the link."""


class DeviceRefused(LinkError):
    """The device answered NAK with a reason the host cannot retry away."""

    def __init__(self, reason: int, detail: str, request: str) -> None:
        self.reason, self.detail, self.request = reason, detail, request
        name = NakReason(reason).name if reason in NakReason._value2member_map_ else str(reason)
        super().__init__(f"device refused {request}: {name}" + (f" ({detail})" if detail else ""))


class ProtocolMismatch(LinkError):
    """The device speaks another protocol or arithmetic version, or answered nonsense."""


class DeviceLimitError(LinkError):
    """The model does not fit the device's advertised limits."""


class DeviceResetLoop(LinkError):
    """The device keeps rebooting before the link can make progress."""


class ReplayMismatch(LinkError):
    """After a device reboot, replayed steps gave outputs other than the first time."""


class _DeviceReset(Exception):
    """Internal: the device rebooted (or lost sync); recover and replay."""

    def __init__(self, boot_counter: int) -> None:
        super().__init__(f"device reset (boot counter {boot_counter})")
        self.boot_counter = boot_counter


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


class _Step:
    __slots__ = ("inp", "out")

    def __init__(self, inp: bytes) -> None:
        self.inp = inp
        self.out: bytes | None = None


class Link:
    """A reliable link to one LRF-Dyn device (real or emulated).

    `timeout` is the base retransmission timeout in seconds (adapted upwards from measured round
    trips), `window` the most frames in flight (capped by the device's), `max_retries` the
    consecutive timeouts before LinkTimeout, `checkpoint_every` the timesteps between state
    snapshots used for reboot recovery, `steps_per_frame` a cap on timesteps per STEP frame,
    `first_seq` the first sequence number (default random).
    """

    def __init__(
        self,
        port: str | serial.SerialBase,
        *,
        timeout: float = 0.5,
        window: int = 8,
        baudrate: int = 115200,
        max_retries: int = 10,
        checkpoint_every: int = 1024,
        steps_per_frame: int | None = None,
        first_seq: int | None = None,
    ) -> None:
        if timeout <= 0 or window < 1 or max_retries < 1 or checkpoint_every < 1:
            raise ValueError("timeout, window, max_retries and checkpoint_every must be positive")
        self.timeout, self.max_retries = timeout, max_retries
        self._window_req, self._spf_req = window, steps_per_frame
        self.checkpoint_every = checkpoint_every
        if isinstance(port, str):
            register_url_scheme()
            try:
                self._ser = serial.serial_for_url(port, baudrate=baudrate, timeout=0)
            except (serial.SerialException, ValueError) as e:
                raise LinkClosed(f"cannot open {port}: {e}") from e
            self._own = True
        else:
            self._ser = port
            self._ser.timeout = 0
            self._own = False
        self.port = getattr(self._ser, "portstr", None) or str(port)
        try:
            self._fileno: int | None = self._ser.fileno()
        except (AttributeError, OSError, serial.SerialException):
            self._fileno = None
        self._ser.reset_input_buffer()
        self.stats = LinkStats()
        self.caps: Caps | None = None
        self._deframer = Deframer()
        if first_seq is None:  # random: no overlap with the sequence numbers of a past session
            first_seq = int.from_bytes(os.urandom(2), "little")
        self._seq = (first_seq - 1) % SEQ_MOD
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._gbn_at = -1.0
        self.params: CoreParams | None = None
        self._blob: bytes | None = None
        self._ckpt: bytes | None = None  # None: the reset (all-zero) state
        self._hist: list[_Step] = []  # inputs (and outputs) since the checkpoint
        self._dev_pos = 0  # timesteps of _hist the device has applied
        self._interval = checkpoint_every
        self._resets_since_ckpt = 0
        self._last_crc: int | None = None

    # ---- context manager and counters ------------------------------------------------------

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own and self._ser.is_open:
            self._ser.close()

    @property
    def serial(self) -> serial.SerialBase:
        """The underlying pyserial port."""
        return self._ser

    @property
    def retransmits(self) -> int:
        return self.stats.retransmits

    @property
    def lost(self) -> int:
        return self.stats.lost

    @property
    def naks(self) -> int:
        return self.stats.naks

    @property
    def resets_recovered(self) -> int:
        return self.stats.resets_recovered

    @property
    def window(self) -> int:
        return min(self._window_req, self.caps.window) if self.caps else 1

    @property
    def steps_per_frame(self) -> int:
        """Timesteps carried by one STEP frame (MTU-bound, at most 255)."""
        if self.params is None or self.caps is None:
            raise LinkError("no parameters loaded")
        bps = bytes_per_step(self.params.n_tokens, self.params.dim)
        k = min(255, (self.caps.mtu - STEP_HEAD.size - 4) // bps)
        return max(1, min(k, self._spf_req or k))

    # ---- public operations -----------------------------------------------------------------

    def hello(self) -> Caps:
        """Handshake; returns the device's capabilities. A new boot counter after an earlier
        handshake (with parameters loaded) triggers recovery."""
        old = self.caps
        caps = self._handshake()
        if old is not None and caps.boot_counter != old.boot_counter and self._blob is not None:
            self._robust(lambda: None, reset=_DeviceReset(caps.boot_counter))
        return self.caps or caps

    def load(self, params: CoreParams) -> None:
        """Upload and commit parameters (chunked to the MTU); the device state starts at zero."""
        if self.caps is None:
            self._handshake()
        caps = self.caps
        assert caps is not None
        bps = bytes_per_step(params.n_tokens, params.dim)
        if params.n_tokens > caps.max_tokens or params.dim > caps.max_dim:
            raise DeviceLimitError(
                f"model N={params.n_tokens}, D={params.dim} exceeds device limits "
                f"N<={caps.max_tokens}, D<={caps.max_dim}"
            )
        if STEP_HEAD.size + 4 + bps > caps.mtu:
            raise DeviceLimitError(f"one timestep ({bps} bytes) exceeds the device MTU {caps.mtu}")
        blob = params.to_blob()
        for _ in range(self.max_retries):
            try:
                self._upload(TARGET_PARAMS, blob)
                break
            except _DeviceReset:
                self._handshake()
        else:
            raise DeviceResetLoop("device rebooted during every parameter upload")
        self.params, self._blob = params, blob
        self._clear_history(None)

    def reset_state(self) -> None:
        """All device state to zero."""

        def op() -> None:
            (f,) = self._exchange([(MsgType.RESET_STATE, b"")])
            target, _ = COMMIT.unpack_from(f.payload)
            if target != TARGET_RESET:
                raise ProtocolMismatch(f"RESET_STATE answered with target {target}")

        self._need_params()
        self._robust(op)
        self._clear_history(None)

    def step(self, u_frames: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run timesteps on the device: inputs u [N, D] bool each, outputs s [N, D] bool each."""
        p = self._need_params()
        u = np.asarray(u_frames if isinstance(u_frames, np.ndarray) else list(u_frames))
        if u.size == 0:
            return []
        if u.ndim != 3 or u.shape[1:] != (p.n_tokens, p.dim):
            raise ValueError(
                f"step inputs must be [T, {p.n_tokens}, {p.dim}] spikes, got shape {u.shape}"
            )
        if u.dtype != np.bool_:
            if not np.isin(u, (0, 1)).all():
                raise ValueError("step inputs must be boolean spikes (0/1)")
            u = u.astype(bool)
        t = u.shape[0]
        bps = bytes_per_step(p.n_tokens, p.dim)
        packed = np.packbits(u.reshape(t, -1), axis=1, bitorder="little").tobytes()
        entries = [_Step(packed[i * bps : (i + 1) * bps]) for i in range(t)]
        self._hist.extend(entries)
        self._robust(lambda: None)
        out = b"".join(e.out for e in entries)  # type: ignore[misc]
        rows = np.frombuffer(out, dtype=np.uint8).reshape(t, bps)
        bits = np.unpackbits(rows, axis=1, count=p.n_tokens * p.dim, bitorder="little")
        self.stats.steps += t
        return list(bits.reshape(t, p.n_tokens, p.dim).view(bool))

    def read_state(self) -> np.ndarray:
        """The device state, int16 [heads, k, head_dim] (also becomes the recovery checkpoint)."""
        p = self._need_params()

        def op() -> np.ndarray:
            raw = self._read_state_raw()
            self._clear_history(raw)
            self.stats.checkpoints += 1
            return raw

        raw = self._robust(op)
        return np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(p.heads, p.k, p.head_dim)

    def ping(self, payload: bytes = b"ping") -> float:
        """Round-trip time of one PING in seconds."""
        if self.caps is None:
            self._handshake()
        t0 = time.perf_counter()
        (f,) = self._robust(lambda: self._exchange([(MsgType.PING, payload)]))
        if f.payload != payload:
            raise ProtocolMismatch("PONG payload differs from PING")
        return time.perf_counter() - t0

    # ---- recovery --------------------------------------------------------------------------

    def _need_params(self) -> CoreParams:
        if self.params is None:
            raise LinkError("no parameters loaded: call load(params) first")
        return self.params

    def _clear_history(self, ckpt: bytes | None) -> None:
        self._ckpt = ckpt
        del self._hist[: self._dev_pos]
        self._dev_pos = 0
        self._resets_since_ckpt = 0

    def _robust(self, op: Callable[[], object], reset: _DeviceReset | None = None) -> object:
        """Bring the device up to date with the history, then run op; recover from reboots."""
        pending = reset
        while True:
            try:
                if pending is not None:
                    self._recover(pending)
                    pending = None
                self._sync_steps()
                return op()
            except _DeviceReset as r:
                pending = r

    def _recover(self, reset: _DeviceReset) -> None:
        self._resets_since_ckpt += 1
        if self._resets_since_ckpt > 3 and self._interval == 1 or self._resets_since_ckpt > 32:
            raise DeviceResetLoop(
                f"device rebooted {self._resets_since_ckpt} times without progress "
                f"(last boot counter {reset.boot_counter})"
            )
        self._interval = max(1, self._interval // 2)  # checkpoint more often under reboots
        self._handshake()
        if self._blob is not None:
            self._upload(TARGET_PARAMS, self._blob)
            if self._ckpt is not None:
                self._upload(TARGET_STATE, self._ckpt)
        self.stats.replayed += self._dev_pos
        self._dev_pos = 0
        self.stats.resets_recovered += 1

    def _sync_steps(self) -> None:
        """Apply _hist[_dev_pos:] on the device, checkpointing every `_interval` timesteps."""
        while self._dev_pos < len(self._hist):
            end = min(len(self._hist), max(self._dev_pos + 1, self._interval))
            self._run_steps(self._dev_pos, end)
            self._dev_pos = end
            if self._dev_pos >= self._interval:
                raw = self._read_state_raw()
                if self._last_crc is not None and zlib.crc32(raw) != self._last_crc:
                    raise ProtocolMismatch("READ_STATE differs from the state CRC after the steps")
                self._clear_history(raw)
                self.stats.checkpoints += 1
                self._interval = min(self.checkpoint_every, 2 * self._interval)

    def _run_steps(self, lo: int, hi: int) -> None:
        p = self._need_params()
        k = self.steps_per_frame
        bps = bytes_per_step(p.n_tokens, p.dim)
        hist = self._hist
        reqs = []
        for a in range(lo, hi, k):
            b = min(hi, a + k)
            flags = STEP_WANT_STATE_CRC if b == hi else 0
            reqs.append((MsgType.STEP, STEP_HEAD.pack(b - a, flags) + b"".join(
                hist[i].inp for i in range(a, b)
            )))
        self._last_crc = None

        def on_reply(idx: int, f: Frame) -> None:
            a = lo + idx * k
            n, flags = STEP_HEAD.unpack_from(f.payload)
            off = STEP_HEAD.size
            want = min(hi, a + k) - a
            if flags & STEP_WANT_STATE_CRC:
                self._last_crc = int.from_bytes(f.payload[off : off + 4], "little")
                off += 4
            if n != want or len(f.payload) != off + n * bps:
                raise ProtocolMismatch(f"STEP_RESULT for {want} steps carries {n}")
            for j in range(n):
                out = f.payload[off + j * bps : off + (j + 1) * bps]
                e = hist[a + j]
                if e.out is None:
                    e.out = out
                elif e.out != out:
                    raise ReplayMismatch(
                        f"timestep {a + j} since the checkpoint gave different spikes on replay"
                    )

        self._exchange(reqs, on_reply)

    # ---- protocol operations ---------------------------------------------------------------

    def _handshake(self) -> Caps:
        for _ in range(self.max_retries):
            try:
                hello = HELLO.pack(PROTOCOL_VERSION, PROTOCOL_VERSION)
                (f,) = self._exchange([(MsgType.HELLO, hello)])
                break
            except _DeviceReset:  # cannot happen for HELLO, but keep the loop total
                continue
        else:
            raise DeviceResetLoop("no handshake")
        caps = Caps.unpack(f.payload)
        if caps.version != PROTOCOL_VERSION:
            raise ProtocolMismatch(f"device protocol {caps.version}, host {PROTOCOL_VERSION}")
        if caps.arith_id != ARITH_ID:
            raise ProtocolMismatch(f"device arithmetic ID {caps.arith_id}, host {ARITH_ID}")
        self.caps = caps
        return caps

    def _upload(self, target: int, blob: bytes) -> None:
        assert self.caps is not None
        size = self.caps.mtu - CHUNK.size
        mtype = MsgType.LOAD_PARAMS if target == TARGET_PARAMS else MsgType.LOAD_STATE
        reqs = [
            (mtype, CHUNK.pack(off, len(blob)) + blob[off : off + size])
            for off in range(0, max(1, len(blob)), size)
        ]
        crc = zlib.crc32(blob)
        reqs.append((MsgType.COMMIT, COMMIT.pack(target, crc)))
        replies = self._exchange(reqs)
        got_target, got = COMMIT.unpack_from(replies[-1].payload)
        if got_target != target or (target == TARGET_PARAMS and got != crc):
            raise ProtocolMismatch(f"COMMIT answered target {got_target}, crc 0x{got:08x}")

    def _read_state_raw(self) -> bytes:
        assert self.caps is not None
        size = self.caps.mtu - STATE_DATA.size
        (first,) = self._exchange([(MsgType.READ_STATE, READ_STATE.pack(0, size))])
        total, _, crc = STATE_DATA.unpack_from(first.payload)
        parts = [first.payload[STATE_DATA.size :]]
        have = len(parts[0])
        if have < total:
            reqs = [
                (MsgType.READ_STATE, READ_STATE.pack(off, size))
                for off in range(have, total, size)
            ]
            for f in self._exchange(reqs):
                t2, _, c2 = STATE_DATA.unpack_from(f.payload)
                if (t2, c2) != (total, crc):
                    raise ProtocolMismatch("state changed between READ_STATE chunks")
                parts.append(f.payload[STATE_DATA.size :])
        raw = b"".join(parts)
        if len(raw) != total or zlib.crc32(raw) != crc:
            raise ProtocolMismatch("READ_STATE data does not match its CRC")
        return raw

    # ---- the windowed exchange -------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % SEQ_MOD
        return self._seq

    def _rto(self, tries: int) -> float:
        base = self.timeout
        if self._srtt is not None:
            base = max(base, 1.5 * self._srtt + 4 * self._rttvar)
        return base * (1 << min(tries, 2))

    def _exchange(
        self,
        requests: Sequence[tuple[int, bytes]],
        on_reply: Callable[[int, Frame], None] | None = None,
    ) -> list[Frame]:
        """Send requests in a sliding window; returns their answers in order. Retransmits on
        timeout, on a NAK for a gap, and when a later answer shows an earlier one was lost."""
        n = len(requests)
        replies: list[Frame | None] = [None] * n
        outstanding: dict[int, _Out] = {}
        nxt = done = 0
        win = self.window
        while done < n:
            while nxt < n and len(outstanding) < win:
                mtype, payload = requests[nxt]
                seq = self._next_seq()
                raw = encode_frame(Frame(mtype, seq, 0, 0, payload))
                now = time.monotonic()
                o = _Out(nxt, seq, mtype, raw, now, now)
                outstanding[seq] = o
                self._write(raw)
                nxt += 1
            oldest = next(iter(outstanding.values()))
            deadline = oldest.last_sent + self._rto(oldest.tries)
            frames = self._poll(deadline)
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
                if outstanding and now - self._gbn_at > 0.5 * self._rto(0):
                    self._gbn_at = now
                    self.stats.lost += 1
                    for x in list(outstanding.values()):
                        self._resend(x)
                return None
            if o is None:
                return None  # about a frame already settled
            if nak.reason == NakReason.NOT_SYNCED:
                raise _DeviceReset(nak.boot_counter)
            raise DeviceRefused(nak.reason, nak.detail, MsgType(o.type).name)
        if o is None:
            self.stats.duplicates += 1
            return None
        if f.type != _ANSWER.get(MsgType(o.type)):
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
        try:
            self._ser.write(raw)
        except (serial.SerialException, OSError) as e:
            raise LinkClosed(f"{self.port}: write failed: {e}") from e
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(raw)

    def _poll(self, deadline: float) -> list[Frame]:
        """Frames received before `deadline` (returns as soon as at least one arrived)."""
        frames: list[Frame] = []
        while True:
            wait = deadline - time.monotonic()
            try:
                if self._fileno is not None:
                    r, _, _ = select.select([self._fileno], [], [], max(0.0, wait))
                    data = self._ser.read(1 << 16) if r else b""
                else:
                    data = self._ser.read(1 << 16)
                    if not data and wait > 0:
                        time.sleep(min(wait, 0.0005))
            except (serial.SerialException, OSError) as e:
                raise LinkClosed(f"{self.port}: read failed: {e}") from e
            if data:
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
