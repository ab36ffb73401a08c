"""`spikestream --version`, and light starts: `--help` and `info` import neither torch nor numba,
and `info` loads h5py only for an HDF5 file (checked in fresh interpreters, not by timing)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np

import spikestream
from spikestream import Recording, make_events
from spikestream.cli import COMMANDS, build_parser
from spikestream.datasets import write_events

PROBE = """
import sys
from spikestream.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("HEAVY", sorted(m for m in ("torch", "numba", "expelliarmus", "h5py") if m in sys.modules))
sys.exit(code)
"""


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          timeout=120)


def test_version() -> None:
    out = probe("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"spikestream {spikestream.__version__}"
    assert "HEAVY []" in out.stdout
    assert spikestream.__version__ == importlib.metadata.version("spikestream")


def test_help_imports_no_command() -> None:
    out = probe("--help")
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout
    assert "HEAVY []" in out.stdout


def test_info_imports_no_torch(tmp_path: Path) -> None:
    """`info` reads and checks events (in numpy: the numba check is for processes that have
    numba loaded already) and never loads torch, numba or a decoder its file does not need."""
    ev = make_events([1, 2, 3], [4, 5, 6], [10, 20, 30], [1, 0, 1])
    path = tmp_path / "e.h5"
    write_events(path, Recording(ev, (8, 8, 2)))
    out = probe("info", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert '"events": 3' in out.stdout
    assert "HEAVY ['h5py']" in out.stdout
    npy = tmp_path / "e.npy"
    write_events(npy, Recording(ev, (8, 8, 2)))
    out = probe("info", str(npy), "--json")
    assert out.returncode == 0, out.stderr
    assert '"events": 3' in out.stdout
    assert "HEAVY []" in out.stdout
    bad = probe("info", str(tmp_path / "missing.h5"))
    assert bad.returncode == 3 and "HEAVY []" in bad.stdout  # 3: a missing path


def test_command_table_matches_the_modules() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: help_line for name, (_, help_line) in COMMANDS.items()}
    np.testing.assert_equal(sorted(sub.choices), sorted(COMMANDS))
