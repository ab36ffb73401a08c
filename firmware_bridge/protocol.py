"""Wire protocol of the LRF-Dyn device: frames, message layouts and bit-packed spikes.

A frame on the wire is ``0x00 | COBS(header | payload | CRC-32) | 0x00``. The header is
little-endian ``version:u8 flags:u8 seq:u16 ack:u16 type:u8 length:u16`` (9 bytes); the CRC is
zlib's CRC-32 of header and payload, little-endian. ``docs/protocol.md`` describes every message,
the device state machine and the host's recovery rules. Host and device both use this module; it
needs numpy and the standard library only (COBS and CRC-32 are in `wire`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from spikestream.firmware_bridge.wire import CobsError, cobs_decode, cobs_encode, crc32

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHHBH")
CRC = struct.Struct("<I")
DELIMITER = b"\x00"
SEQ_MOD = 1 << 16

FLAG_RESPONSE = 0x01  # set on every frame the device sends

# Payload layouts (all little-endian).
HELLO = struct.Struct("<BB")  # version_min, version_max
CAPS = struct.Struct("<BHBHHHIIBHH")  # see Caps
CHUNK = struct.Struct("<II")  # offset, total (then data): LOAD_PARAMS, LOAD_STATE
COMMIT = struct.Struct("<BI")  # target, crc32 (COMMIT and OK)
STEP_HEAD = struct.Struct("<BB")  # n_steps, step_flags
READ_STATE = struct.Struct("<IH")  # offset, max_len
STATE_DATA = struct.Struct("<III")  # total, offset, state_crc (then data)
NAK_HEAD = struct.Struct("<BIH")  # reason, boot_counter, expected_seq (then UTF-8 detail)

STEP_WANT_STATE_CRC = 0x01  # step_flags bit: STEP_RESULT carries the state CRC after the steps

TARGET_PARAMS = 0
TARGET_STATE = 1
TARGET_RESET = 2  # OK after RESET_STATE


class MsgType(IntEnum):
    """Message types; device-to-host answers have the high bit set."""

    HELLO = 0x01
    LOAD_PARAMS = 0x02
    LOAD_STATE = 0x03
    COMMIT = 0x04
    RESET_STATE = 0x05
    STEP = 0x06
    READ_STATE = 0x07
    PING = 0x08
    OK = 0x80
    CAPS = 0x81
    STEP_RESULT = 0x86
    STATE_DATA = 0x87
    PONG = 0x88
    NAK = 0xFF


class NakReason(IntEnum):
    """Why the device refused a frame (first payload byte of NAK)."""

    CORRUPT = 1  # a frame failed COBS, length or CRC checks (ack = last in-order seq)
    OUT_OF_ORDER = 2  # seq ahead of the expected one: a frame went missing
    NOT_SYNCED = 3  # no HELLO since boot: the host must handshake (and reload)
    STALE = 4  # a duplicate too old for the response cache
    BAD_MESSAGE = 5  # payload malformed for its type
    UNKNOWN_TYPE = 6
    NO_PARAMS = 7  # STEP/RESET_STATE/READ_STATE/LOAD_STATE before parameters were committed
    BAD_PARAMS = 8  # the committed blob did not parse or breaks the device's limits
    CRC_MISMATCH = 9  # COMMIT crc differs from the received blob, or blob incomplete
    TOO_LARGE = 10  # blob, MTU or shape over the device's limits
    BAD_VERSION = 11  # protocol version not supported
    BAD_SHAPE = 12  # STEP length does not match n_steps x bytes per step


class FrameError(ValueError):
    """A received byte string is not a valid frame."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    type: int
    seq: int
    ack: int = 0
    flags: int = 0
    payload: bytes = b""
    version: int = PROTOCOL_VERSION


def encode_frame(frame: Frame) -> bytes:
    """Frame bytes ready for the wire, both delimiters included."""
    if len(frame.payload) > 0xFFFF:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds the 16-bit length field")
    body = HEADER.pack(
        frame.version, frame.flags, frame.seq % SEQ_MOD, frame.ack % SEQ_MOD, int(frame.type),
        len(frame.payload),
    ) + frame.payload
    body += CRC.pack(crc32(body))
    return DELIMITER + cobs_encode(body) + DELIMITER


def decode_frame(raw: bytes) -> Frame:
    """Decode the bytes between two delimiters; FrameError says what is wrong."""
    try:
        body = cobs_decode(raw)
    except CobsError as e:
        raise FrameError(f"COBS decoding failed: {e}") from None
    if len(body) < HEADER.size + CRC.size:
        raise FrameError(f"frame of {len(body)} bytes is shorter than header + CRC")
    (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    if crc32(memoryview(body)[: -CRC.size]) != crc:
        raise FrameError("CRC-32 mismatch")
    version, flags, seq, ack, mtype, length = HEADER.unpack_from(body)
    if length != len(body) - HEADER.size - CRC.size:
        raise FrameError(f"length field {length} != payload of {len(body) - HEADER.size - 4}")
    return Frame(mtype, seq, ack, flags, bytes(body[HEADER.size : -CRC.size]), version)


def wire_size(payload_len: int) -> int:
    """Most bytes one frame with `payload_len` payload bytes occupies on the wire."""
    body = HEADER.size + payload_len + CRC.size
    # COBS adds at most one code byte per started 254-byte block (an empty body needs one).
    return 2 + body + max(1, -(-body // 254))


class Deframer:
    """Splits a byte stream at the 0x00 delimiters into raw frame bodies (still COBS-coded).

    Bytes before the first delimiter and runs longer than `max_len` without a delimiter are
    dropped and counted in `overflows` (a receiver must resynchronise on the next 0x00).
    """

    def __init__(self, max_len: int = 1 << 17) -> None:
        self.max_len = max_len
        self._buf = bytearray()
        self.overflows = 0

    def feed(self, data: bytes) -> list[bytes]:
        if DELIMITER not in data:
            self._buf += data
            if len(self._buf) > self.max_len:
                self._buf.clear()
                self.overflows += 1
            return []
        self._buf += data
        parts = self._buf.split(DELIMITER)
        self._buf = bytearray(parts[-1])
        return [bytes(p) for p in parts[:-1] if p]

    def reset(self) -> None:
        self._buf.clear()


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in the 16-bit sequence space (-32768..32767)."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


# ---- spikes ----------------------------------------------------------------------------------


def bytes_per_step(n_tokens: int, dim: int) -> int:
    """Bytes of one bit-packed timestep of [n_tokens, dim] spikes."""
    return (n_tokens * dim + 7) // 8


def pack_spikes(spikes: np.ndarray) -> bytes:
    """Bit-pack bool spikes [T, N, D] (or [N, D]): each timestep row-major, LSB first, padded to
    a whole byte per timestep."""
    a = np.asarray(spikes)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"spikes must be [N, D] or [T, N, D], got shape {a.shape}")
    flat = a.reshape(a.shape[0], -1).astype(bool, copy=False)
    return np.packbits(flat, axis=1, bitorder="little").tobytes()


def unpack_spikes(
    data: bytes | memoryview, n_steps: int, n_tokens: int, dim: int
) -> np.ndarray:
    """Inverse of pack_spikes: bool [n_steps, n_tokens, dim]."""
    bps = bytes_per_step(n_tokens, dim)
    if len(data) != n_steps * bps:
        raise ValueError(f"{len(data)} spike bytes != {n_steps} steps x {bps} bytes")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(n_steps, bps)
    bits = np.unpackbits(rows, axis=1, count=n_tokens * dim, bitorder="little")
    return bits.reshape(n_steps, n_tokens, dim).view(bool)


# ---- CAPS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caps:
    """The device's answer to HELLO."""

    version: int
    mtu: int
    window: int
    max_tokens: int
    max_dim: int
    arith_id: int
    model_hash: int  # CRC-32 of the committed parameter blob, 0 when none
    boot_counter: int
    params_loaded: bool
    n_tokens: int  # shape of the loaded model (0 when none)
    dim: int

    def pack(self) -> bytes:
        return CAPS.pack(
            self.version, self.mtu, self.window, self.max_tokens, self.max_dim, self.arith_id,
            self.model_hash, self.boot_counter, int(self.params_loaded), self.n_tokens, self.dim,
        )

    @classmethod
    def unpack(cls, payload: bytes) -> Caps:
        if len(payload) < CAPS.size:
            raise FrameError(f"CAPS payload of {len(payload)} bytes, expected {CAPS.size}")
        v, mtu, win, mt, md, arith, mh, boot, st, n, d = CAPS.unpack_from(payload)
        return cls(v, mtu, win, mt, md, arith, mh, boot, bool(st & 1), n, d)


@dataclass(frozen=True)
class Nak:
    """A decoded NAK payload."""

    reason: int
    boot_counter: int
    expected_seq: int
    detail: str = ""

    def pack(self) -> bytes:
        head = NAK_HEAD.pack(self.reason, self.boot_counter, self.expected_seq)
        return head + self.detail.encode()

    @classmethod
    def unpack(cls, payload: bytes) -> Nak:
        if len(payload) < NAK_HEAD.size:
            raise FrameError(f"NAK payload of {len(payload)} bytes, expected >= {NAK_HEAD.size}")
        r, boot, exp = NAK_HEAD.unpack_from(payload)
        return cls(r, boot, exp, payload[NAK_HEAD.size :].decode("utf-8", "replace"))

    @property
    def reason_name(self) -> str:
        try:
            return NakReason(self.reason).name
        except ValueError:
            return f"reason {self.reason}"
