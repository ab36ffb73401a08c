"""`spikestream info` and `spikestream convert` on the real recordings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spikestream.cli import main
from spikestream.datasets import read_events

CLI = [sys.executable, "-c", "import sys; from spikestream.cli import main; sys.exit(main())"]
KEYS = {"format", "events", "width", "height", "t_start_us", "t_end_us"}


@pytest.mark.parametrize(
    ("name", "fmt", "events", "width", "height"),
    [
        ("aedat2/IMU_rotDisk.aedat", "aedat2", 374_296, 240, 180),
        ("aedat4/sample.aedat4", "aedat4", 111_954, 320, 240),
        ("prophesee/evt3_sample.raw", "evt3", 219_596, 1280, 720),
        ("prophesee/dat_test_NCARS.dat", "dat", 4_407, None, None),
        ("nmnist-small/train/1.bs2", "nbin", None, 34, 34),
    ],
)
def test_info_json(real_data: Path, capsys: pytest.CaptureFixture[str], name: str, fmt: str,
                   events: int | None, width: int | None, height: int | None) -> None:
    assert main(["info", str(real_data / name), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert KEYS <= set(info)
    rec = read_events(real_data / name)  # second path to the same facts
    assert info["format"] == fmt
    assert info["events"] == (events if events is not None else len(rec)) == len(rec)
    assert (info["width"], info["height"]) == rec.sensor_size[:2]
    if width is not None:
        assert (info["width"], info["height"]) == (width, height)
    assert info["t_start_us"] == int(rec.events["t"][0])
    assert info["t_end_us"] == int(rec.events["t"][-1])
    assert info["on_fraction"] == pytest.approx(rec.events["p"].mean())


def test_info_text_and_errors(real_data: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(real_data / "aedat4" / "sample.aedat4")]) == 0
    out = capsys.readouterr().out
    assert "aedat4" in out and "111954" in out and "320" in out
    bad = tmp_path / "broken.aedat"
    bad.write_bytes(b"#!AER-DAT2.0\r\n# AEChip: DAVIS240C\r\n" + b"\x00" * 13)
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.aedat" in err and "byte offset" in err


def test_convert_then_info(real_data: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    src = real_data / "aedat2" / "IMU_rotDisk.aedat"
    out = tmp_path / "rot.h5"
    assert main(["convert", str(src), str(out)]) == 0
    assert "374296" in capsys.readouterr().out
    back = read_events(out)
    orig = read_events(src)
    np.testing.assert_array_equal(back.events, orig.events)
    assert back.sensor_size == orig.sensor_size
    assert back.metadata["source_format"] == "aedat2"
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "hdf5" and info["events"] == 374_296


def test_console_script_runs(tmp_path: Path) -> None:
    """The installed entry point, in a fresh interpreter, on a small file."""
    path = tmp_path / "s.npy"
    np.save(path, np.zeros(3, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")]))
    run = subprocess.run([*CLI, "info", str(path), "--json"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["events"] == 3
