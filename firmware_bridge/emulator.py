"""Software emulator of an LRF-Dyn device: the protocol state machine around the numpy IntCore.

Device side only: numpy and the wire protocol, no torch, no pyserial.
``DeviceEmulator.receive(bytes) -> [frames]`` is the whole firmware; `serving.EmulatorServer`
runs it over a byte channel at an honest line rate.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spikestream.firmware_bridge.faults import FaultConfig, FaultInjector
from spikestream.firmware_bridge.intcore import ARITH_ID, CoreParams, IntCore
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
    pack_spikes,
    seq_diff,
    unpack_spikes,
)
from spikestream.firmware_bridge.wire import crc32


class _Refuse(Exception):
    """Raised inside a handler: answer the frame with a NAK."""

    def __init__(self, reason: NakReason, detail: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class DeviceStats:
    """What the emulated device saw and did."""

    frames_in: int = 0
    corrupt_in: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    steps_applied: int = 0
    step_frames: int = 0
    naks_sent: int = 0
    reboots: int = 0


class DeviceEmulator:
    """The device's protocol state machine (see docs/protocol.md) around an IntCore.

    `core_factory` builds the core from committed parameters (default: the reference IntCore).
    """

    def __init__(
        self,
        *,
        mtu: int = 8192,
        window: int = 16,
        max_tokens: int = 4096,
        max_dim: int = 4096,
        max_blob: int = 1 << 20,
        faults: FaultConfig | None = None,
        seed: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        core_factory: Callable[[CoreParams], IntCore] = IntCore,
    ) -> None:
        if not 64 <= mtu <= 0xFFFF:
            raise ValueError(f"mtu {mtu} outside 64..65535")
        if not 1 <= window <= 255:
            raise ValueError(f"window {window} outside 1..255")
        self.mtu, self.window = mtu, window
        self.max_tokens, self.max_dim, self.max_blob = max_tokens, max_dim, max_blob
        self.faults = FaultInjector(faults or FaultConfig(), seed)
        self._sleep = sleep
        self.core_factory = core_factory
        self._outer = Deframer(max_len=4 * mtu + 64)  # splits frames for per-frame faults
        self._inner = Deframer(max_len=4 * mtu + 64)  # the receiver proper
        self.stats = DeviceStats()
        self.boot_counter = 0
        self._boot()

    # ---- lifecycle -------------------------------------------------------------------------

    def _boot(self) -> None:
        """Power-on state: unsynced, no parameters, empty caches; the boot counter goes up."""
        self.boot_counter += 1
        self.synced = False
        self.expected = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._nak_gap_for: int | None = None
        self.core: IntCore | None = None
        self.params: CoreParams | None = None
        self.model_hash = 0
        self._blob: dict[int, bytearray] = {}
        self._filled: dict[int, int] = {}
        self._step_frames_since_boot = 0
        self._tx_seq = 0
        self._outer.reset()
        self._inner.reset()

    def reboot(self) -> None:
        """Lose everything but the boot counter, as a power cycle would."""
        self.stats.reboots += 1
        self.faults.counts.resets += 1
        self._boot()

    # ---- byte interface --------------------------------------------------------------------

    def receive(self, data: bytes) -> list[bytes]:
        """Feed received bytes; returns the encoded frames to transmit, in order."""
        if self.faults.config.drop or self.faults.config.flip or self.faults.config.dup or (
            self.faults.config.garbage
        ):
            raws: list[bytes] = []
            for raw in self._outer.feed(data):
                for piece in self.faults.apply(b"\x00" + raw + b"\x00", inbound=True):
                    raws.extend(self._inner.feed(piece))
        else:
            raws = self._inner.feed(data)
        out: list[bytes] = []
        for raw in raws:
            stall = self.faults.stall_seconds()
            if stall:
                self._sleep(stall)
            reply, reboot = self._handle(raw)
            for frame in reply:
                out.extend(self.faults.apply(frame, inbound=False))
            if reboot:
                self.reboot()
                break  # the rest of this burst arrived while the device was rebooting
        return out

    # ---- frame handling --------------------------------------------------------------------

    def _send(self, mtype: int, ack: int, payload: bytes = b"") -> bytes:
        self._tx_seq = (self._tx_seq + 1) % SEQ_MOD
        return encode_frame(Frame(mtype, self._tx_seq, ack, FLAG_RESPONSE, payload))

    def _nak(self, reason: NakReason, ack: int, detail: str = "") -> bytes:
        self.stats.naks_sent += 1
        nak = Nak(reason, self.boot_counter, self.expected, detail[:200])
        return self._send(MsgType.NAK, ack, nak.pack())

    def _handle(self, raw: bytes) -> tuple[list[bytes], bool]:
        """Answer one raw frame; the flag asks for a reboot after the answer went out."""
        try:
            f = decode_frame(raw)
        except FrameError as e:
            self.stats.corrupt_in += 1
            return [self._nak(NakReason.CORRUPT, (self.expected - 1) % SEQ_MOD, str(e))], False
        self.stats.frames_in += 1
        if f.flags & FLAG_RESPONSE:
            return [], False  # our own frames echoed back: ignore
        if f.version != PROTOCOL_VERSION:
            return [self._nak(NakReason.BAD_VERSION, f.seq, f"frame version {f.version}")], False
        if f.type == MsgType.HELLO:  # always a fresh start: a new host may reuse old seqs
            return [self._hello(f)], False
        behind = self.synced and seq_diff(f.seq, self.expected) < 0
        if behind and f.seq in self._cache:
            self.stats.duplicates += 1
            return [self._cache[f.seq]], False  # answered before: never applied twice
        if not self.synced:
            return [self._nak(NakReason.NOT_SYNCED, f.seq, "no HELLO since boot")], False
        if behind:
            return [self._nak(NakReason.STALE, f.seq, "older than the response cache")], False
        if f.seq != self.expected:
            self.stats.out_of_order += 1
            if self._nak_gap_for == self.expected:
                return [], False  # one NAK per gap; the host's timer covers the rest
            self._nak_gap_for = self.expected
            return [self._nak(NakReason.OUT_OF_ORDER, f.seq, "a frame is missing")], False
        self.expected = (self.expected + 1) % SEQ_MOD
        self._nak_gap_for = None
        reboot = False
        try:
            if len(f.payload) > self.mtu:
                raise _Refuse(NakReason.TOO_LARGE, f"payload {len(f.payload)} > mtu {self.mtu}")
            mtype, payload = self._dispatch(f)
            frame = self._send(mtype, f.seq, payload)
            if f.type == MsgType.STEP:
                self._step_frames_since_boot += 1
                ra = self.faults.config.reset_after
                reboot = bool(ra) and self._step_frames_since_boot >= ra
        except _Refuse as r:
            frame = self._nak(r.reason, f.seq, r.detail)
        self._cache[f.seq] = frame
        while len(self._cache) > 2 * self.window:
            self._cache.popitem(last=False)
        return [frame], reboot

    def caps(self) -> Caps:
        p = self.params
        return Caps(
            PROTOCOL_VERSION, self.mtu, self.window, self.max_tokens, self.max_dim, ARITH_ID,
            self.model_hash, self.boot_counter, p is not None,
            p.n_tokens if p else 0, p.dim if p else 0,
        )

    def _hello(self, f: Frame) -> bytes:
        if len(f.payload) < HELLO.size:
            return self._nak(NakReason.BAD_MESSAGE, f.seq, "HELLO needs version_min, version_max")
        vmin, vmax = HELLO.unpack_from(f.payload)
        if not vmin <= PROTOCOL_VERSION <= vmax:
            return self._nak(
                NakReason.BAD_VERSION, f.seq, f"device speaks version {PROTOCOL_VERSION}"
            )
        self.synced = True
        self.expected = (f.seq + 1) % SEQ_MOD
        self._cache.clear()
        self._nak_gap_for = None
        frame = self._send(MsgType.CAPS, f.seq, self.caps().pack())
        self._cache[f.seq] = frame
        return frame

    def _need_core(self) -> IntCore:
        if self.core is None:
            raise _Refuse(NakReason.NO_PARAMS, "no parameters committed since boot")
        return self.core

    def _dispatch(self, f: Frame) -> tuple[int, bytes]:
        t, p = f.type, f.payload
        if t in (MsgType.LOAD_PARAMS, MsgType.LOAD_STATE):
            return self._load_chunk(TARGET_PARAMS if t == MsgType.LOAD_PARAMS else TARGET_STATE, p)
        if t == MsgType.COMMIT:
            if len(p) != COMMIT.size:
                raise _Refuse(NakReason.BAD_MESSAGE, "COMMIT needs target, crc32")
            target, crc = COMMIT.unpack(p)
            return self._commit(target, crc)
        if t == MsgType.RESET_STATE:
            core = self._need_core()
            core.reset()
            return MsgType.OK, COMMIT.pack(TARGET_RESET, core.state_crc())
        if t == MsgType.STEP:
            return self._step(p)
        if t == MsgType.READ_STATE:
            if len(p) != READ_STATE.size:
                raise _Refuse(NakReason.BAD_MESSAGE, "READ_STATE needs offset, max_len")
            offset, max_len = READ_STATE.unpack(p)
            core = self._need_core()
            raw = np.ascontiguousarray(core.state(), dtype="<i2").tobytes()
            if offset > len(raw):
                raise _Refuse(NakReason.BAD_MESSAGE, f"offset {offset} > state size {len(raw)}")
            n = min(max_len, self.mtu - STATE_DATA.size)
            head = STATE_DATA.pack(len(raw), offset, crc32(raw))
            return MsgType.STATE_DATA, head + raw[offset : offset + n]
        if t == MsgType.PING:
            return MsgType.PONG, p
        raise _Refuse(NakReason.UNKNOWN_TYPE, f"message type 0x{t:02x}")

    def _load_chunk(self, target: int, p: bytes) -> tuple[int, bytes]:
        if len(p) < CHUNK.size:
            raise _Refuse(NakReason.BAD_MESSAGE, "chunk needs offset, total")
        offset, total = CHUNK.unpack_from(p)
        data = p[CHUNK.size :]
        if target == TARGET_STATE:
            self._need_core()
        if total > self.max_blob:
            raise _Refuse(NakReason.TOO_LARGE, f"blob of {total} bytes > {self.max_blob}")
        if offset == 0:
            self._blob[target] = bytearray(total)
            self._filled[target] = 0
        buf = self._blob.get(target)
        if buf is None or len(buf) != total or offset != self._filled[target]:
            raise _Refuse(NakReason.BAD_MESSAGE, f"chunk at {offset} of {total} out of sequence")
        if offset + len(data) > total:
            raise _Refuse(NakReason.BAD_MESSAGE, f"chunk at {offset} overruns total {total}")
        buf[offset : offset + len(data)] = data
        self._filled[target] = offset + len(data)
        return MsgType.OK, COMMIT.pack(target, self._filled[target])

    def _commit(self, target: int, crc: int) -> tuple[int, bytes]:
        if target not in (TARGET_PARAMS, TARGET_STATE):
            raise _Refuse(NakReason.BAD_MESSAGE, f"COMMIT target {target}")
        buf = self._blob.get(target)
        if buf is None or self._filled.get(target) != len(buf):
            raise _Refuse(NakReason.CRC_MISMATCH, "blob incomplete")
        got = crc32(buf)
        if got != crc:
            raise _Refuse(NakReason.CRC_MISMATCH, f"blob crc 0x{got:08x} != 0x{crc:08x}")
        del self._blob[target]
        if target == TARGET_PARAMS:
            try:
                params = CoreParams.from_blob(bytes(buf))
            except ValueError as e:
                raise _Refuse(NakReason.BAD_PARAMS, str(e)) from None
            if params.n_tokens > self.max_tokens or params.dim > self.max_dim:
                raise _Refuse(
                    NakReason.TOO_LARGE,
                    f"N={params.n_tokens}, D={params.dim} over limits "
                    f"{self.max_tokens}, {self.max_dim}",
                )
            if STEP_HEAD.size + 4 + bytes_per_step(params.n_tokens, params.dim) > self.mtu:
                raise _Refuse(NakReason.TOO_LARGE, "one timestep does not fit the MTU")
            self.params, self.core, self.model_hash = params, self.core_factory(params), crc
            return MsgType.OK, COMMIT.pack(TARGET_PARAMS, crc)
        core = self._need_core()
        shape = core.state().shape
        if len(buf) != 2 * int(np.prod(shape)):
            raise _Refuse(NakReason.BAD_MESSAGE, f"state of {len(buf)} bytes for shape {shape}")
        core.load_state(np.frombuffer(bytes(buf), dtype="<i2").reshape(shape))
        return MsgType.OK, COMMIT.pack(TARGET_STATE, core.state_crc())

    def _step(self, p: bytes) -> tuple[int, bytes]:
        core = self._need_core()
        if len(p) < STEP_HEAD.size:
            raise _Refuse(NakReason.BAD_MESSAGE, "STEP needs n_steps, flags")
        n, flags = STEP_HEAD.unpack_from(p)
        prm = core.params
        bps = bytes_per_step(prm.n_tokens, prm.dim)
        if len(p) != STEP_HEAD.size + n * bps:
            raise _Refuse(
                NakReason.BAD_SHAPE, f"{len(p) - 2} spike bytes for {n} steps of {bps} bytes"
            )
        u = unpack_spikes(memoryview(p)[STEP_HEAD.size :], n, prm.n_tokens, prm.dim)
        s = np.stack([core.step(x) for x in u]) if n else u
        self.stats.steps_applied += n
        self.stats.step_frames += 1
        out = STEP_HEAD.pack(n, flags & STEP_WANT_STATE_CRC)
        if flags & STEP_WANT_STATE_CRC:
            out += struct.pack("<I", core.state_crc())
        return MsgType.STEP_RESULT, out + pack_spikes(s)
