"""The device session: handshake, parameter upload, timesteps, state reads, and recovery from
device reboots by reloading and replaying, on top of a reliable `FrameChannel`.

``Link("/dev/ttyACM0")``, ``Link("/dev/pts/7")``, ``Link("socket://127.0.0.1:5555")`` and
``Link("spikeemu://?faults=drop=0.1&seed=1")`` run the same code.

A reboot (NAK NOT_SYNCED, or a new boot counter) is recovered by handshaking, re-uploading the
parameters, restoring the last state checkpoint (READ_STATE snapshots taken every
`checkpoint_every` timesteps) and replaying the inputs since; replayed outputs must equal the
ones already received (docs/protocol.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import serial

from spikestream.firmware_bridge.intcore import ARITH_ID, CoreParams
from spikestream.firmware_bridge.link.channel import FrameChannel, LinkStats
from spikestream.firmware_bridge.link.errors import (
    DeviceLimitError,
    DeviceRebooted,
    DeviceResetLoop,
    LinkError,
    ProtocolMismatch,
    ReplayMismatch,
)
from spikestream.firmware_bridge.protocol import (
    CHUNK,
    COMMIT,
    HELLO,
    PROTOCOL_VERSION,
    READ_STATE,
    STATE_DATA,
    STEP_HEAD,
    STEP_WANT_STATE_CRC,
    TARGET_PARAMS,
    TARGET_RESET,
    TARGET_STATE,
    Caps,
    Frame,
    MsgType,
    bytes_per_step,
    pack_spikes,
    unpack_spikes,
)
from spikestream.firmware_bridge.wire import crc32


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
    `first_seq` the first sequence number (default random), `dead_after` the seconds of silence
    after which the device is reported dead (`DeviceSilent`; default: max(4 RTO, 1 s)).
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
        dead_after: float | None = None,
    ) -> None:
        if timeout <= 0 or window < 1 or max_retries < 1 or checkpoint_every < 1:
            raise ValueError("timeout, window, max_retries and checkpoint_every must be positive")
        self._window_req, self._spf_req = window, steps_per_frame
        self.checkpoint_every = checkpoint_every
        self.stats = LinkStats()
        self.channel = FrameChannel(
            port, timeout=timeout, max_retries=max_retries, baudrate=baudrate,
            first_seq=first_seq, stats=self.stats, dead_after=dead_after,
        )
        self.port = self.channel.port
        self.caps: Caps | None = None
        self.params: CoreParams | None = None
        self._blob: bytes | None = None
        self._ckpt: bytes | None = None  # None: the reset (all-zero) state
        self._hist: list[_Step] = []  # inputs (and outputs) since the checkpoint
        self._dev_pos = 0  # timesteps of _hist the device has applied
        self._interval = checkpoint_every
        self._resets_since_ckpt = 0
        self._last_crc: int | None = None
        self._frames_this_boot = 0  # STEP frames answered since the last handshake

    # ---- context manager and counters ------------------------------------------------------

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    @property
    def serial(self) -> serial.SerialBase:
        """The underlying pyserial port."""
        return self.channel.serial

    @property
    def timeout(self) -> float:
        """The least retransmission timeout in seconds (the channel's)."""
        return self.channel.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.channel.timeout = value

    @property
    def max_retries(self) -> int:
        """Consecutive timeouts before LinkTimeout (the channel's)."""
        return self.channel.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self.channel.max_retries = value

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
        return self.channel.window

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
            self._robust(lambda: None, reset=DeviceRebooted(caps.boot_counter))
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
            except DeviceRebooted:
                self._handshake()
        else:
            raise DeviceResetLoop("device rebooted during every parameter upload")
        self.params, self._blob = params, blob
        self._clear_history(None)

    def reset_state(self) -> None:
        """All device state to zero."""

        def op() -> None:
            (f,) = self.channel.exchange([(MsgType.RESET_STATE, b"")])
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
        packed = pack_spikes(u)
        entries = [_Step(packed[i * bps : (i + 1) * bps]) for i in range(t)]
        self._hist.extend(entries)
        self._robust(lambda: None)
        out = b"".join(e.out for e in entries)  # type: ignore[misc]
        self.stats.steps += t
        return list(unpack_spikes(out, t, p.n_tokens, p.dim))

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
        (f,) = self._robust(lambda: self.channel.exchange([(MsgType.PING, payload)]))
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

    def _robust(self, op: Callable[[], object], reset: DeviceRebooted | None = None) -> object:
        """Bring the device up to date with the history, then run op; recover from reboots."""
        pending = reset
        while True:
            try:
                if pending is not None:
                    self._recover(pending)
                    pending = None
                self._sync_steps()
                return op()
            except DeviceRebooted as r:
                pending = r

    def _recover(self, reset: DeviceRebooted) -> None:
        self._resets_since_ckpt += 1
        if self._resets_since_ckpt > 3 and self._interval == 1 or self._resets_since_ckpt > 32:
            raise DeviceResetLoop(
                f"device rebooted {self._resets_since_ckpt} times without progress "
                f"(last boot counter {reset.boot_counter})"
            )
        # Checkpoint more often under reboots: every step frame but the last that the device
        # answered in its last life fits between reboots (with the state read after them);
        # when it answered too few, halve.
        fit = (self._frames_this_boot - 1) * self.steps_per_frame
        self._interval = max(1, min(fit if fit > 0 else self._interval // 2, self.checkpoint_every))
        self._handshake()
        if self._blob is not None:
            self._upload(TARGET_PARAMS, self._blob)
            if self._ckpt is not None:
                self._upload(TARGET_STATE, self._ckpt)
        self.stats.replayed += sum(1 for e in self._hist if e.out is not None)
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
                if self._last_crc is not None and crc32(raw) != self._last_crc:
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
            self._frames_this_boot += 1
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

        self.channel.exchange(reqs, on_reply)

    # ---- protocol operations ---------------------------------------------------------------

    def _handshake(self) -> Caps:
        for _ in range(self.max_retries):
            try:
                hello = HELLO.pack(PROTOCOL_VERSION, PROTOCOL_VERSION)
                (f,) = self.channel.exchange([(MsgType.HELLO, hello)])
                break
            except DeviceRebooted:  # cannot happen for HELLO, but keep the loop total
                continue
        else:
            raise DeviceResetLoop("no handshake")
        caps = Caps.unpack(f.payload)
        if caps.version != PROTOCOL_VERSION:
            raise ProtocolMismatch(f"device protocol {caps.version}, host {PROTOCOL_VERSION}")
        if caps.arith_id != ARITH_ID:
            raise ProtocolMismatch(f"device arithmetic ID {caps.arith_id}, host {ARITH_ID}")
        self.caps = caps
        self.channel.window = min(self._window_req, caps.window)
        self._frames_this_boot = 0
        return caps

    def _upload(self, target: int, blob: bytes) -> None:
        assert self.caps is not None
        size = self.caps.mtu - CHUNK.size
        mtype = MsgType.LOAD_PARAMS if target == TARGET_PARAMS else MsgType.LOAD_STATE
        reqs = [
            (mtype, CHUNK.pack(off, len(blob)) + blob[off : off + size])
            for off in range(0, max(1, len(blob)), size)
        ]
        crc = crc32(blob)
        reqs.append((MsgType.COMMIT, COMMIT.pack(target, crc)))
        replies = self.channel.exchange(reqs)
        got_target, got = COMMIT.unpack_from(replies[-1].payload)
        if got_target != target or (target == TARGET_PARAMS and got != crc):
            raise ProtocolMismatch(f"COMMIT answered target {got_target}, crc 0x{got:08x}")

    def _read_state_raw(self) -> bytes:
        assert self.caps is not None
        size = self.caps.mtu - STATE_DATA.size
        (first,) = self.channel.exchange([(MsgType.READ_STATE, READ_STATE.pack(0, size))])
        total, _, crc = STATE_DATA.unpack_from(first.payload)
        parts = [first.payload[STATE_DATA.size :]]
        have = len(parts[0])
        if have < total:
            reqs = [
                (MsgType.READ_STATE, READ_STATE.pack(off, size))
                for off in range(have, total, size)
            ]
            for f in self.channel.exchange(reqs):
                t2, _, c2 = STATE_DATA.unpack_from(f.payload)
                if (t2, c2) != (total, crc):
                    raise ProtocolMismatch("state changed between READ_STATE chunks")
                parts.append(f.payload[STATE_DATA.size :])
        raw = b"".join(parts)
        if len(raw) != total or crc32(raw) != crc:
            raise ProtocolMismatch("READ_STATE data does not match its CRC")
        return raw
