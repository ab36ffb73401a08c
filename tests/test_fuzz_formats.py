"""Bad input never crashes, hangs or yields events that break the contract: every reader either
returns a valid `Recording` or raises `EventFormatError` (hypothesis on synthetic bytes, seeded
corruption and truncation of the real samples)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikestream import EventFormatError, Recording
from spikestream.datasets import iter_events, read_events, write_events

PREFIXES = {
    ".aedat": b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.DAVIS240C\r\n",
    ".aedat3": b"#!AER-DAT3.1\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n",
    ".aedat4": b"#!AER-DAT4.0\r\n",
    ".raw": b"% evt 3.0\n% geometry 1280x720\n",
    ".evt2.raw": b"% evt 2.0\n% geometry 640x480\n",
    ".dat": b"% Data file containing Event2D events.\n% Version 2\n\x00\x08",
    ".bs2": b"",
    ".h5": b"\x89HDF\r\n\x1a\n",
    ".npy": b"\x93NUMPY\x01\x00",
    ".npz": b"PK\x03\x04",
}


def outcome(path: Path) -> Recording | EventFormatError:
    """Read whole and streamed; both must agree and obey the contract, or raise the format error."""
    try:
        rec = read_events(path)
    except EventFormatError as e:
        assert str(path) in str(e)
        return e
    rec.validate(source=path)
    with iter_events(path, chunk_events=1000) as stream:
        assert stream.sensor_size == rec.sensor_size
        packets = list(stream)
    streamed = np.concatenate(packets) if packets else rec.events[:0]
    np.testing.assert_array_equal(streamed, rec.events)
    return rec


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(kind=st.sampled_from(sorted(PREFIXES)), body=st.binary(max_size=600))
def test_random_bytes_after_each_magic(kind: str, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{kind}"
        path.write_bytes(PREFIXES[kind] + body)
        outcome(path)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(data=st.binary(max_size=400), ext=st.sampled_from(
    [".aedat", ".aedat4", ".raw", ".dat", ".bin", ".h5", ".npy", ".npz", ".txt"]))
def test_garbage_with_any_extension(data: bytes, ext: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"g{ext}"
        path.write_bytes(data)
        outcome(path)


def _mutants(data: bytes, start: int, seed: int, n: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        b = bytearray(data)
        mode = k % 4
        if mode == 0:  # scattered byte flips
            for i in rng.integers(start, len(b), 20):
                b[i] ^= int(rng.integers(1, 256))
        elif mode == 1:  # truncation anywhere (also inside the header)
            b = b[: int(rng.integers(0, len(b)))]
        elif mode == 2:  # a block of garbage
            m = int(rng.integers(1, 400))
            s = int(rng.integers(start, len(b) - m))
            b[s:s + m] = rng.integers(0, 256, m, dtype=np.uint8).tobytes()
        else:  # garbage in the header
            for i in rng.integers(0, max(start, 16), 4):
                b[i] = int(rng.integers(0, 256))
        out.append((f"mode{mode}", bytes(b)))
    return out


SAMPLES = {  # relative path -> (byte offset where data begins, mutants to try)
    "aedat2/IMU_rotDisk.aedat": (175_039, 12),
    "aedat4/sample.aedat4": (0, 24),
    "prophesee/evt3_sample.raw": (166, 24),
    "prophesee/dat_test_NCARS.dat": (93, 24),
    "nmnist-small/train/1.bs2": (0, 24),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_corrupted_real_samples(real_data: Path, tmp_path: Path, name: str) -> None:
    src = real_data / name
    start, n = SAMPLES[name]
    truth = read_events(src)
    errors = 0
    for i, (mode, data) in enumerate(_mutants(src.read_bytes(), start, seed=i_seed(name), n=n)):
        path = tmp_path / f"m{i}{src.suffix}"
        path.write_bytes(data)
        result = outcome(path)
        if isinstance(result, EventFormatError):
            errors += 1
        elif mode == "mode1" and src.suffix in (".bs2", ".aedat", ".dat"):
            # a whole-record truncation of a fixed-record format keeps a prefix of the events
            assert len(result) <= len(truth)
            np.testing.assert_array_equal(result.events, truth.events[: len(result)])
    assert errors >= 1  # corruption is noticed at least sometimes (most formats lack checksums)


def i_seed(name: str) -> int:
    return sum(name.encode())


def test_corrupted_hdf5(real_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "ours.h5"
    write_events(src, read_events(real_data / "nmnist-small" / "train" / "10.bs2"))
    for i, (_, data) in enumerate(_mutants(src.read_bytes(), 0, seed=5, n=8)):
        path = tmp_path / f"m{i}.h5"
        path.write_bytes(data)
        outcome(path)


def test_wrong_magic_and_unknown_format(tmp_path: Path, real_data: Path) -> None:
    path = tmp_path / "x.aedat4"
    shutil.copyfile(real_data / "prophesee" / "dat_test_NCARS.dat", path)
    assert read_events(path).metadata["format"] == "dat"  # magic beats the extension
    path = tmp_path / "x.h5"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(EventFormatError, match="magic bytes") as e:
        read_events(path)
    assert e.value.offset == 0
    path = tmp_path / "x.xyz"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(EventFormatError, match="unknown format"):
        read_events(path)
    path = tmp_path / "v1.aedat"
    path.write_bytes(b"#!AER-DAT1.0\r\n" + b"\x00" * 12)
    with pytest.raises(EventFormatError, match="AEDAT version"):
        read_events(path)
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "missing.aedat")


def test_aedat4_header_not_utf8_is_an_error_not_an_abort(real_data: Path, tmp_path: Path) -> None:
    """The `aedat` package aborts the process on such a header; we must refuse it first."""
    data = bytearray((real_data / "aedat4" / "sample.aedat4").read_bytes())
    data[90] = 0xC3  # inside the XML description: an invalid UTF-8 sequence
    path = tmp_path / "bad.aedat4"
    path.write_bytes(bytes(data))
    with pytest.raises(EventFormatError, match="UTF-8") as e:
        read_events(path)
    assert e.value.offset == 90


@pytest.mark.parametrize("field,value,message", [
    (4, 0, "packet body of 0 bytes"),  # the `aedat` package panics on this one
    (4, 2**31, "packet body of 2147483648 bytes"),  # it would allocate what the size claims
    (0, 7, "packet of stream 7"),
])
def test_aedat4_packet_headers_are_checked_before_the_decoder_sees_them(
        real_data: Path, tmp_path: Path, field: int, value: int, message: str) -> None:
    import struct
    import subprocess
    import sys

    src = real_data / "aedat4" / "sample.aedat4"
    data = bytearray(src.read_bytes())
    first = 14 + 4 + struct.unpack_from("<I", data, 14)[0]  # magic, header size, IOHeader
    data[first + field:first + field + 4] = struct.pack("<I" if field else "<i", value)
    path = tmp_path / "bad.aedat4"
    path.write_bytes(bytes(data))
    with pytest.raises(EventFormatError, match=message) as e:
        read_events(path)
    assert e.value.offset == first + field and e.value.record == 0
    cli = "import sys; from spikestream.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "info", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "panic" not in proc.stderr + proc.stdout


def test_native_output_is_captured_around_decoder_calls(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    from spikestream.datasets.native_output import captured_native_output

    with captured_native_output() as got:
        os.write(2, b"thread '<unnamed>' panicked at table.rs\n")
        os.write(1, b"WARNING: The timestamps are not monotonic.\n")
    assert "panicked" in got.text and "WARNING" in got.text
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    os.write(2, b"after\n")  # the descriptors are restored
    assert capfd.readouterr().err == "after\n"


def test_a_reused_capture_file_holds_each_call_text_only(capfd: pytest.CaptureFixture[str]) -> None:
    import os
    import tempfile

    from spikestream.datasets.native_output import captured_native_output

    with tempfile.TemporaryFile() as sink:
        with captured_native_output(sink=sink) as first:
            os.write(2, b"a long first message from the decoder\n")
        with captured_native_output(sink=sink) as quiet:
            pass
        with captured_native_output(sink=sink) as second:
            os.write(1, b"short\n")
    assert first.text == "a long first message from the decoder\n"
    assert quiet.text == "" and second.text == "short\n"
    assert capfd.readouterr() == ("", "")
