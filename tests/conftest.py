"""Shared fixtures: the real recordings folder, and a small thread count for the 2-core machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """`$SPIKESTREAM_REAL_DATA`, else `../shared/data` beside the project, else None."""
    env = os.environ.get("SPIKESTREAM_REAL_DATA")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real recordings (PROVENANCE.md); skips the test when it is absent."""
    d = real_data_dir()
    if d is None:
        pytest.skip("real recordings not found: set SPIKESTREAM_REAL_DATA or place ../shared/data")
    return d


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--port",
        default=None,
        help="serial port of a real LRF-Dyn device for the hardware-in-the-loop tests",
    )
    parser.addoption(
        "--target",
        default="python",
        choices=("python", "host", "qemu"),
        help="device the HIL suite (tests/test_hil.py) runs against: the Python emulator, the C "
        "firmware's host build, or its Cortex-M3 build under QEMU (default: python)",
    )


def firmware_or_skip(target: str) -> None:
    """Build the C firmware for `target` ('host' or 'qemu'); skip the test with the reason when
    the tools are missing."""
    from spikestream.firmware_bridge.firmware import launch

    why = launch.missing_tools(target)
    if why:
        pytest.skip(f"firmware target {target}: {why}")
    key = "host" if target == "host" else "mps2"
    if key not in _BUILT:
        launch.build(("host", "mps2") if key == "mps2" else ("host",))
        _BUILT.update({"host", key})


_BUILT: set[str] = set()


@pytest.fixture(scope="session")
def firmware():
    """`firmware(target)` builds the C firmware for 'host' or 'qemu' (once per session) or skips
    the test, naming the missing tools."""
    return firmware_or_skip
