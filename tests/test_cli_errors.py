"""Command-line errors: one line on stderr naming what and where, an exit code by kind, no
traceback; `convert` writes numpy or HDF5 by extension and never leaves a partial output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from spikestream.cli import (
    EXIT_BAD_INPUT,
    EXIT_DEVICE,
    EXIT_MISSING,
    EXIT_PERMISSION,
    error_exit_code,
    main,
)
from spikestream.datasets import read_events
from spikestream.pipeline.checkpoint import WEIGHTS_DIR


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spikestream {command}: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_convert_writes_numpy_for_npy_and_refuses_unknown_outputs(real_data: Path, tmp_path,
                                                                  capsys) -> None:
    src = real_data / "aedat4" / "sample.aedat4"
    out = tmp_path / "out.npy"
    assert main(["convert", str(src), str(out)]) == 0
    assert out.read_bytes()[:6] == b"\x93NUMPY"  # a numpy file, not HDF5 under a .npy name
    back = np.load(out, allow_pickle=False)
    np.testing.assert_array_equal(back, read_events(src).events)
    np.testing.assert_array_equal(read_events(out).events, back)
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "out.txt")]) == EXIT_BAD_INPUT
    assert ".txt" in one_error_line(capsys, "convert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]


def test_convert_never_clobbers_or_leaves_partial_files(real_data: Path, tmp_path,
                                                        capsys) -> None:
    good = tmp_path / "good.h5"
    assert main(["convert", str(real_data / "aedat4" / "sample.aedat4"), str(good)]) == 0
    before = good.read_bytes()
    capsys.readouterr()
    assert main(["convert", str(good), str(good)]) == EXIT_BAD_INPUT  # convert X X
    one_error_line(capsys, "convert")
    bad = tmp_path / "broken.aedat"
    bad.write_bytes(b"#!AER-DAT2.0\r\n# AEChip: DAVIS240C\r\n" + b"\x01" * 13)
    assert main(["convert", str(bad), str(good)]) == EXIT_BAD_INPUT
    assert "broken.aedat" in one_error_line(capsys, "convert")
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.aedat", "good.h5"]


def test_paths_of_the_wrong_kind_and_missing_ones(tmp_path, capsys) -> None:
    assert main(["info", str(tmp_path)]) == EXIT_MISSING  # info DIRECTORY
    assert str(tmp_path) in one_error_line(capsys, "info")
    assert main(["info", str(tmp_path / "none.h5")]) == EXIT_MISSING
    one_error_line(capsys, "info")
    assert main(["model-info", "--checkpoint", "no-such-weights", "--random", "0.1"]) == \
        EXIT_MISSING
    one_error_line(capsys, "model-info")


def test_permission_errors_have_their_own_code(tmp_path, capsys) -> None:
    assert error_exit_code(PermissionError(13, "Permission denied", "x")) == EXIT_PERMISSION
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not apply")
    locked = tmp_path / "locked.npy"
    np.save(locked, np.zeros(3, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")]))
    locked.chmod(0)
    assert main(["info", str(locked)]) == EXIT_PERMISSION
    one_error_line(capsys, "info")


@pytest.mark.parametrize("change", [
    {"config": None},
    {"config.depth": 100000},
    {"config.embed_dim": 1e6},
    {"config.embed_dim": 32},  # weights of another shape
    {"weights": b"garbage, not a zip archive"},  # torch's UnpicklingError
])
def test_bad_checkpoints_end_in_one_line(tmp_path, capsys, change) -> None:
    meta = json.loads((WEIGHTS_DIR / "nmnist.json").read_text())
    shutil.copy(WEIGHTS_DIR / "nmnist.pt", tmp_path / "ck.pt")
    for key, value in change.items():
        if key == "config":
            meta["config"] = value
        elif key.startswith("config."):
            meta["config"][key.split(".", 1)[1]] = value
        else:
            (tmp_path / "ck.pt").write_bytes(value)
    (tmp_path / "ck.json").write_text(json.dumps(meta))
    ck = str(tmp_path / "ck.pt")
    for argv in (["stream", "--checkpoint", ck, "--source", "sim", "--json"],
                 ["model-info", "--checkpoint", ck, "--random", "0.1"]):
        assert main(argv) == EXIT_BAD_INPUT
        assert "ck." in one_error_line(capsys, argv[0])


def test_hil_json_keeps_stdout_parseable_on_a_dead_port(tmp_path, capsys) -> None:
    port = str(tmp_path / "no-such-tty")
    assert main(["hil", "--port", port, "--steps", "4", "--input", "random", "--json",
                 "--timeout", "0.2"]) == EXIT_DEVICE
    out, err = capsys.readouterr()
    obj = json.loads(out)
    assert port in obj["error"] and obj["exit_code"] == EXIT_DEVICE
    assert len(err.strip().splitlines()) == 1 and port in err
