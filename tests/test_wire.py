"""COBS and CRC-32 of the wire: published vectors, the `cobs` package as a second
implementation, malformed input; and which modules each side of the link imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from spikestream.firmware_bridge.wire import CobsError, cobs_decode, cobs_encode, crc32

# The worked examples of Cheshire & Baker's encoding as listed in the COBS literature
# (data -> encoding, without the 0x00 delimiter).
RUN254 = bytes(range(1, 255))  # 01 02 ... FE
VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (RUN254, b"\xff" + RUN254),
    (b"\x00" + RUN254, b"\x01\xff" + RUN254),
    (RUN254 + b"\xff", b"\xff" + RUN254 + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("data", "encoded"), VECTORS, ids=range(len(VECTORS)))
def test_cobs_published_vectors(data: bytes, encoded: bytes) -> None:
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


def random_blobs(seed: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(0, 1300))
        a = rng.integers(1, 256, n, dtype=np.uint8)
        a[rng.random(n) < rng.choice([0.0, 0.002, 0.05, 0.5, 0.95])] = 0
        out.append(a.tobytes())
    return out


def test_cobs_roundtrip_and_no_zero_inside() -> None:
    for data in random_blobs(1, 400) + [b"\x01" * 254 * k for k in (1, 2, 3)]:
        enc = cobs_encode(data)
        assert 0 not in enc
        assert len(enc) <= len(data) + 1 + len(data) // 254
        assert cobs_decode(enc) == data


def test_cobs_matches_the_cobs_package() -> None:
    cobs = pytest.importorskip("cobs.cobs", reason="the cobs package is not installed")
    spikes = [  # STEP payloads as they are: bit-packed sparse spikes, up to the MTU
        np.packbits(np.random.default_rng(n).random(8 * n) < 0.09).tobytes() for n in (600, 8192)
    ]
    for data in random_blobs(2, 600) + [v for v, _ in VECTORS] + spikes:
        assert cobs_encode(data) == cobs.encode(data)
        assert cobs_decode(cobs.encode(data)) == data
    rng = np.random.default_rng(3)
    for _ in range(2000):  # arbitrary input: both accept the same strings and decode alike
        raw = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        try:
            want: bytes | None = cobs.decode(raw)
        except cobs.DecodeError:
            want = None
        try:
            got: bytes | None = cobs_decode(raw)
        except CobsError:
            got = None
        assert got == want, raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"\x03\x11\x00", "zero byte"), (b"\x05\x11\x22", "not enough"), (b"\x02\x11\x04", "not")],
)
def test_cobs_decode_rejects_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(CobsError, match=message):
        cobs_decode(raw)


def test_crc32_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value
    assert crc32(b"") == 0


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_device_side_needs_numpy_only() -> None:
    mods = imported_after(
        "import spikestream.firmware_bridge.emulator, spikestream.firmware_bridge.intcore"
    )
    assert "numpy" in mods and "spikestream.firmware_bridge.protocol" in mods
    assert not {m for m in mods if m.split(".")[0] in ("serial", "cobs", "torch", "numba")}


def test_host_link_does_not_import_the_emulator() -> None:
    mods = imported_after("from spikestream.firmware_bridge import Link")
    assert "spikestream.firmware_bridge.link.session" in mods and "serial" in mods
    assert not {
        m for m in mods if m.startswith("spikestream.firmware_bridge.")
        and m.split(".")[2] in ("emulator", "serving", "ports", "faults")
    }
