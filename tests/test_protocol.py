"""Wire format and the device state machine, driven frame by frame (no threads, no timing)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from spikestream.firmware_bridge.emulator import DeviceEmulator
from spikestream.firmware_bridge.faults import FaultConfig
from spikestream.firmware_bridge.hil import bernoulli_kv, random_core_params
from spikestream.firmware_bridge.intcore import ARITH_ID, IntCore
from spikestream.firmware_bridge.protocol import (
    CHUNK,
    COMMIT,
    FLAG_RESPONSE,
    HEADER,
    HELLO,
    PROTOCOL_VERSION,
    READ_STATE,
    STATE_DATA,
    STEP_HEAD,
    STEP_WANT_STATE_CRC,
    TARGET_PARAMS,
    TARGET_STATE,
    Caps,
    Deframer,
    Frame,
    FrameError,
    MsgType,
    Nak,
    NakReason,
    decode_frame,
    encode_frame,
    pack_spikes,
    seq_diff,
    unpack_spikes,
    wire_size,
)
from spikestream.firmware_bridge.wire import cobs_encode

# ---- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 253, 254, 255, 600, 8192])
def test_frame_roundtrip_and_layout(n: int) -> None:
    rng = np.random.default_rng(n)
    payload = rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # zeros included
    f = Frame(MsgType.STEP, seq=0xBEEF, ack=0x1234, flags=FLAG_RESPONSE, payload=payload)
    wire = encode_frame(f)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert decode_frame(wire[1:-1]) == f
    assert len(wire) <= wire_size(n)
    # Independent check of the layout: undo COBS by hand, then read header, payload and CRC.
    body = bytearray()
    i, enc = 0, wire[1:-1]
    while i < len(enc):
        code = enc[i]
        body += enc[i + 1 : i + code]
        i += code
        if code < 0xFF and i < len(enc):
            body.append(0)
    assert struct.unpack_from("<BBHHBH", body) == (
        PROTOCOL_VERSION, FLAG_RESPONSE, 0xBEEF, 0x1234, MsgType.STEP, n,
    )
    assert bytes(body[HEADER.size : -4]) == payload
    assert struct.unpack("<I", body[-4:])[0] == zlib.crc32(body[:-4])


def test_every_single_bit_flip_is_rejected() -> None:
    wire = encode_frame(Frame(MsgType.PING, 7, 3, 0, bytes(range(40)) + b"\x00\x00spikes"))
    for bit in range(8 * len(wire)):
        bad = bytearray(wire)
        bad[bit // 8] ^= 1 << (bit % 8)
        d = Deframer()
        for raw in d.feed(bytes(bad) + b"\x00"):
            with pytest.raises(FrameError):
                decode_frame(raw)


def test_decode_errors_say_what_is_wrong() -> None:
    with pytest.raises(FrameError, match="shorter"):
        decode_frame(b"\x03ab")
    body = HEADER.pack(1, 0, 1, 0, MsgType.PING, 5) + b"ab"  # length field lies
    with pytest.raises(FrameError, match="length"):
        decode_frame(cobs_encode(body + struct.pack("<I", zlib.crc32(body))))


def test_deframer_reassembles_any_chunking_and_skips_noise() -> None:
    rng = np.random.default_rng(1)
    frames = [
        Frame(MsgType.STEP, s, payload=rng.bytes(int(rng.integers(0, 700)))) for s in range(20)
    ]
    stream = b"\x17\x99noise" + b"".join(encode_frame(f) + b"\x05\x06" for f in frames)
    d = Deframer()
    got, errors = [], 0
    pos = 0
    while pos < len(stream):
        step = int(rng.integers(1, 97))
        for raw in d.feed(stream[pos : pos + step]):
            try:
                got.append(decode_frame(raw))
            except FrameError:
                errors += 1
        pos += step
    assert got == frames
    assert errors == 20  # each "\x05\x06" run between frames is one bad frame


def test_deframer_drops_runs_longer_than_max() -> None:
    d = Deframer(max_len=100)
    assert d.feed(b"\x01" * 150) == []
    assert d.overflows == 1
    f = Frame(MsgType.PING, 1, payload=b"x")
    assert [decode_frame(r) for r in d.feed(encode_frame(f))] == [f]


def test_seq_diff_wraps() -> None:
    assert seq_diff(1, 0xFFFF) == 2
    assert seq_diff(0xFFFF, 1) == -2
    assert seq_diff(5, 5) == 0


def test_spike_packing_bit_order() -> None:
    rng = np.random.default_rng(2)
    s = rng.random((3, 5, 7)) < 0.5  # 35 bits: padded to 5 bytes per step
    data = pack_spikes(s)
    assert len(data) == 3 * 5
    for t in range(3):
        flat = s[t].reshape(-1)
        for j in range(35):
            assert (data[t * 5 + j // 8] >> (j % 8)) & 1 == flat[j]  # LSB first, row-major
        assert data[t * 5 + 4] >> 3 == 0  # padding bits are zero
    assert np.array_equal(unpack_spikes(data, 3, 5, 7), s)
    with pytest.raises(ValueError, match="spike bytes"):
        unpack_spikes(data[:-1], 3, 5, 7)


def test_caps_and_nak_roundtrip() -> None:
    c = Caps(1, 8192, 16, 4096, 4096, ARITH_ID, 0xDEADBEEF, 7, True, 64, 256)
    assert Caps.unpack(c.pack()) == c
    n = Nak(NakReason.OUT_OF_ORDER, 3, 0xFFFE, "a frame is missing")
    assert Nak.unpack(n.pack()) == n and n.reason_name == "OUT_OF_ORDER"


# ---- device state machine ------------------------------------------------------------------


class Host:
    """Speaks to a DeviceEmulator frame by frame."""

    def __init__(self, dev: DeviceEmulator, seq: int = 100) -> None:
        self.dev, self.seq = dev, seq

    def send(self, mtype: int, payload: bytes = b"", seq: int | None = None) -> list[Frame]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.raw(encode_frame(Frame(mtype, seq, 0, 0, payload)))

    def raw(self, data: bytes) -> list[Frame]:
        frames = []
        d = Deframer()
        for wire in self.dev.receive(data):
            frames += [decode_frame(r) for r in d.feed(wire)]
        return frames

    def one(self, mtype: int, payload: bytes = b"", seq: int | None = None) -> Frame:
        (f,) = self.send(mtype, payload, seq)
        assert f.flags & FLAG_RESPONSE
        return f

    def hello(self) -> Caps:
        f = self.one(MsgType.HELLO, HELLO.pack(1, 1))
        assert f.type == MsgType.CAPS and f.ack == self.seq
        return Caps.unpack(f.payload)

    def load(self, blob: bytes, target: int = TARGET_PARAMS, chunk: int = 50) -> Frame:
        mtype = MsgType.LOAD_PARAMS if target == TARGET_PARAMS else MsgType.LOAD_STATE
        for off in range(0, len(blob), chunk):
            f = self.one(mtype, CHUNK.pack(off, len(blob)) + blob[off : off + chunk])
            assert f.type == MsgType.OK, Nak.unpack(f.payload)
        return self.one(MsgType.COMMIT, COMMIT.pack(target, zlib.crc32(blob)))


def nak_reason(f: Frame) -> int:
    assert f.type == MsgType.NAK
    return Nak.unpack(f.payload).reason


@pytest.fixture
def params():
    return random_core_params(heads=2, head_dim=4, k=3, n_tokens=5, seed=3)


def test_handshake_load_step_read_state_against_intcore(params) -> None:
    dev = DeviceEmulator(mtu=256)
    h = Host(dev)
    caps = h.hello()
    assert (caps.version, caps.arith_id, caps.boot_counter) == (1, ARITH_ID, 1)
    assert not caps.params_loaded
    blob = params.to_blob()
    f = h.load(blob)  # several chunks
    assert f.type == MsgType.OK and COMMIT.unpack(f.payload) == (TARGET_PARAMS, zlib.crc32(blob))
    assert h.hello().model_hash == zlib.crc32(blob)
    ref = IntCore(params)
    u = bernoulli_kv(9, 5, 8, 0.5, seed=4)
    f = h.one(MsgType.STEP, STEP_HEAD.pack(9, STEP_WANT_STATE_CRC) + pack_spikes(u))
    assert f.type == MsgType.STEP_RESULT
    n, flags = STEP_HEAD.unpack_from(f.payload)
    expected = np.stack([ref.step(x) for x in u])
    assert (n, flags) == (9, STEP_WANT_STATE_CRC)
    assert struct.unpack_from("<I", f.payload, 2)[0] == ref.state_crc()
    assert np.array_equal(unpack_spikes(f.payload[6:], 9, 5, 8), expected)
    # READ_STATE in small chunks reassembles the reference state.
    raw = b""
    while True:
        f = h.one(MsgType.READ_STATE, READ_STATE.pack(len(raw), 20))
        total, off, crc = STATE_DATA.unpack_from(f.payload)
        raw += f.payload[STATE_DATA.size :]
        if len(raw) >= total:
            break
    assert np.array_equal(np.frombuffer(raw, "<i2").reshape(ref.state().shape), ref.state())
    assert crc == ref.state_crc()


def test_load_state_restores_and_reset_zeroes(params) -> None:
    dev = DeviceEmulator()
    h = Host(dev)
    h.hello()
    h.load(params.to_blob())
    ref = IntCore(params)
    u = bernoulli_kv(6, 5, 8, 0.6, seed=5)
    for x in u[:3]:
        ref.step(x)
    snapshot = ref.state().astype("<i2").tobytes()
    f = h.load(snapshot, TARGET_STATE)
    assert COMMIT.unpack(f.payload) == (TARGET_STATE, ref.state_crc())
    f = h.one(MsgType.STEP, STEP_HEAD.pack(3, 0) + pack_spikes(u[3:]))
    expected = np.stack([ref.step(x) for x in u[3:]])
    assert np.array_equal(unpack_spikes(f.payload[2:], 3, 5, 8), expected)
    f = h.one(MsgType.RESET_STATE)
    assert f.type == MsgType.OK and dev.core is not None and not dev.core.state().any()


def test_refusals_name_their_reason(params) -> None:
    dev = DeviceEmulator(max_tokens=4)
    h = Host(dev)
    assert nak_reason(h.one(MsgType.STEP, STEP_HEAD.pack(0, 0))) == NakReason.NOT_SYNCED
    assert nak_reason(h.one(MsgType.HELLO, HELLO.pack(2, 3))) == NakReason.BAD_VERSION
    h.hello()
    assert nak_reason(h.one(MsgType.STEP, STEP_HEAD.pack(0, 0))) == NakReason.NO_PARAMS
    assert nak_reason(h.one(0x42)) == NakReason.UNKNOWN_TYPE
    blob = params.to_blob()
    h.one(MsgType.LOAD_PARAMS, CHUNK.pack(0, len(blob)) + blob)
    assert nak_reason(h.one(MsgType.COMMIT, COMMIT.pack(0, 12345))) == NakReason.CRC_MISMATCH
    assert nak_reason(h.load(blob)) == NakReason.TOO_LARGE  # N=5 > max_tokens=4
    bad = b"XXXX" + blob[4:]
    assert nak_reason(h.load(bad)) == NakReason.BAD_PARAMS
    dev.max_tokens = 4096
    assert h.load(blob).type == MsgType.OK
    short = STEP_HEAD.pack(2, 0) + b"\x00" * 9  # two steps need 10 bytes
    assert nak_reason(h.one(MsgType.STEP, short)) == NakReason.BAD_SHAPE


def test_duplicates_answered_from_cache_gaps_nakked_once(params) -> None:
    dev = DeviceEmulator()
    h = Host(dev)
    h.hello()
    h.load(params.to_blob())
    u = pack_spikes(bernoulli_kv(1, 5, 8, 0.5, seed=6))
    first = h.send(MsgType.STEP, STEP_HEAD.pack(1, 0) + u)
    again = h.send(MsgType.STEP, STEP_HEAD.pack(1, 0) + u, seq=h.seq)  # a retransmission
    assert again == first and dev.stats.steps_applied == 1 and dev.stats.duplicates == 1
    # A gap: seq+2 before seq+1 gets one NAK; later out-of-order frames stay silent.
    gap = h.send(MsgType.STEP, STEP_HEAD.pack(1, 0) + u, seq=h.seq + 2)
    assert nak_reason(gap[0]) == NakReason.OUT_OF_ORDER
    assert Nak.unpack(gap[0].payload).expected_seq == h.seq + 1
    assert h.send(MsgType.STEP, STEP_HEAD.pack(1, 0) + u, seq=h.seq + 3) == []
    assert dev.stats.steps_applied == 1
    # A corrupt frame is answered with CORRUPT; a frame older than the cache with STALE.
    bad = bytearray(encode_frame(Frame(MsgType.PING, h.seq + 1, payload=b"abc")))
    bad[5] ^= 0x10
    assert nak_reason(h.raw(bytes(bad))[0]) == NakReason.CORRUPT
    for _ in range(40):
        h.one(MsgType.PING, b"p")
    assert nak_reason(h.one(MsgType.PING, b"p", seq=h.seq - 38)) == NakReason.STALE


def test_reset_after_reboots_and_counts_boots(params) -> None:
    dev = DeviceEmulator(faults=FaultConfig(reset_after=2))
    h = Host(dev)
    h.hello()
    h.load(params.to_blob())
    u = pack_spikes(bernoulli_kv(1, 5, 8, 0.5, seed=7))
    assert h.one(MsgType.STEP, STEP_HEAD.pack(1, 0) + u).type == MsgType.STEP_RESULT
    assert h.one(MsgType.STEP, STEP_HEAD.pack(1, 0) + u).type == MsgType.STEP_RESULT  # then reboot
    f = h.one(MsgType.STEP, STEP_HEAD.pack(1, 0) + u)
    assert nak_reason(f) == NakReason.NOT_SYNCED and Nak.unpack(f.payload).boot_counter == 2
    caps = h.hello()
    assert caps.boot_counter == 2 and not caps.params_loaded and caps.model_hash == 0


def test_documented_hello_example() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    line = next(s for s in doc.splitlines() if s.startswith("on the wire:"))
    wire = bytes.fromhex(line.split(":", 1)[1])
    assert encode_frame(Frame(MsgType.HELLO, 0x1A2B, 0, 0, HELLO.pack(1, 1))) == wire
