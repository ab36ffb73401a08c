"""Hardware-in-the-loop conformance: `spikestream emulator` on a real pty and TCP in a separate
process, `spikestream hil` against it, the line-rate limit, real N-MNIST inputs, and the same
checks against a board given with --port (tests marked `hardware`)."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spikestream.cli import EXIT_DEVICE
from spikestream.cli import main as cli_main
from spikestream.firmware_bridge.hil import (
    bernoulli_kv,
    events_kv,
    random_core_params,
    run_conformance,
)
from spikestream.firmware_bridge.intcore import IntCore
from spikestream.firmware_bridge.link import DeviceSilent, Link, LinkClosed

# The full command line, and the same `emulator` command module alone (the full parser imports
# every subcommand, torch included: seconds of start-up on a busy machine).
CLI = [sys.executable, "-c", "import sys; from spikestream.cli import main; sys.exit(main())"]
EMULATOR_ONLY = [
    sys.executable,
    "-c",
    "import argparse, sys; from spikestream.cli import emulator; p = argparse.ArgumentParser(); "
    "emulator.register(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))",
]


@contextlib.contextmanager
def emulator_process(
    *args: str, full_cli: bool = False
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`spikestream emulator ARGS` in a child process; yields (first stdout line, process) and
    always stops it."""
    proc = subprocess.Popen(
        [*(CLI if full_cli else EMULATOR_ONLY), "emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        r, _, _ = select.select([proc.stdout], [], [], 30)
        assert r, "emulator printed nothing within 30 s"
        where = proc.stdout.readline().strip()
        assert where, proc.stderr.read()
        yield where, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def hil_json(capsys, *args: str) -> dict:
    rc = cli_main(["hil", *args, "--json"])
    out = json.loads(capsys.readouterr().out)
    out["rc"] = rc
    return out


def test_pty_emulator_process_and_hil_cli(capsys) -> None:
    with emulator_process("--pty", full_cli=True) as (path, proc):
        assert path.startswith("/dev/")
        res = hil_json(capsys, "--port", path, "--steps", "48", "--tokens", "16", "--input",
                       "random", "--timeout", "0.2")
        again = hil_json(capsys, "--port", path, "--steps", "16", "--tokens", "16", "--input",
                         "random", "--timeout", "0.2")  # a second session on the same device
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert res["rc"] == 0 and res["bit_exact"] and res["steps"] == 48 and res["lost"] == 0
    assert again["bit_exact"] and "boot 1" in again["device"]
    assert proc.returncode == 0 and "64 steps applied" in err


def test_pty_with_faults_and_baud(capsys) -> None:
    spec = "drop=0.05,flip=0.05,dup=0.05,garbage=0.05,reset_after=5"
    with emulator_process("--pty", "--faults", spec, "--seed", "3", "--baud", "2000000",
                          "--mtu", "64") as (
        path, _
    ):
        res = hil_json(capsys, "--port", path, "--steps", "40", "--tokens", "8", "--heads", "2",
                       "--head-dim", "4", "--input", "random", "--timeout", "0.05")
    assert res["rc"] == 0 and res["bit_exact"] and res["lost"] == 0
    assert res["resets_recovered"] >= 1


def test_tcp_emulator_process(capsys) -> None:
    with emulator_process("--tcp", "127.0.0.1:0") as (url, _):
        assert url.startswith("socket://127.0.0.1:")
        res = hil_json(capsys, "--port", url, "--steps", "32", "--tokens", "8", "--input",
                       "random")
    assert res["rc"] == 0 and res["bit_exact"] and res["steps"] == 32


def test_baud_limit_is_honest() -> None:
    # A 3000-byte PING crosses the line twice; at 300 kbaud that is >= 2 x 0.1 s.
    payload = bytes(range(256)) * 11 + b"x" * 184
    with Link("spikeemu://?baud=300000", timeout=1.0) as link:
        link.hello()
        sent, received = link.stats.bytes_sent, link.stats.bytes_received
        rtt = link.ping(payload)
        wire = link.stats.bytes_sent - sent + link.stats.bytes_received - received
    assert wire > 2 * len(payload)
    line = wire * 10 / 300000  # the answer starts only after the request arrived
    assert line <= rtt < 2 * line + 0.3, (rtt, line)


def test_hil_on_real_nmnist_inputs(real_data: Path, capsys) -> None:
    from spikestream.cli.hil import nmnist_inputs

    u, source = nmnist_inputs(real_data / "nmnist-small" / "train", 64, 16, 32)
    assert u.shape == (64, 16, 32) and "2 samples" in source
    assert 0.0 < u.mean() < 0.5  # real, sparse activity
    params = random_core_params(heads=2, head_dim=16, k=3, n_tokens=16, seed=5)
    with Link("spikeemu://?faults=drop=0.1,dup=0.1&seed=2", timeout=0.05) as link:
        res = run_conformance(link, params, u, batch=16)
    assert res.bit_exact and res.steps == 64 and res.output_rate > 0


def test_events_kv_marks_repeated_pixels() -> None:
    from spikestream.events import make_events

    # Pixel (3, 1) fires in bins 0 and 1; pixel (5, 2) only in bin 2.
    ev = make_events(x=[3, 3, 5], y=[1, 1, 2], t=[0, 10, 20], p=[1, 1, 0])
    u = events_kv(ev, (8, 4, 2), 3, 2, 64)
    chan = ((3 * 4 + 1) * 2 + 1) % 64
    assert u.sum() == 1 and u[1, 0, chan]


# ---- a real board -------------------------------------------------------------------------


@pytest.fixture
def board(request) -> str:
    port = request.config.getoption("--port")
    if not port:
        pytest.skip("no device: pass --port /dev/ttyACM0 to run the hardware-in-the-loop tests")
    return port


@pytest.mark.hardware
def test_board_conformance(board: str) -> None:
    params = random_core_params(heads=4, head_dim=16, k=3, n_tokens=64, seed=1)
    u = bernoulli_kv(256, 64, 64, seed=2)
    with Link(board, timeout=1.0) as link:
        res = run_conformance(link, params, u)
    assert res.bit_exact and res.lost == 0, res


@pytest.mark.hardware
def test_board_state_readback_and_reset(board: str) -> None:
    params = random_core_params(heads=2, head_dim=8, k=3, n_tokens=16, seed=3)
    u = bernoulli_kv(32, 16, 16, seed=4)
    core = IntCore(params)
    with Link(board, timeout=1.0) as link:
        link.load(params)
        link.step(u)
        for x in u:
            core.step(x)
        assert np.array_equal(link.read_state(), core.state())
        link.reset_state()
        assert not link.read_state().any()
        t0 = time.perf_counter()
        link.ping()
        assert time.perf_counter() - t0 < 1.0


def test_hil_cli_quantized_lrf_dyn_and_link_failure(capsys) -> None:
    res = hil_json(capsys, "--port", "spikeemu://?seed=1", "--params", "lrf_dyn", "--steps",
                   "16", "--tokens", "8", "--input", "random")
    assert res["rc"] == 0 and res["bit_exact"] and res["params"].startswith("lrf_dyn")
    rc = cli_main(["hil", "--port", "loop://", "--steps", "4", "--tokens", "8", "--input",
                   "random", "--timeout", "0.01"])
    out, err = capsys.readouterr()
    assert rc == EXIT_DEVICE and "LinkTimeout" in err and out == ""  # errors go to stderr


@pytest.mark.parametrize("where", ["--pty", "--tcp=127.0.0.1:0"])
def test_device_vanishing_raises_a_link_error(where: str) -> None:
    from spikestream.firmware_bridge.link import LinkClosed, LinkTimeout

    params = random_core_params(heads=2, head_dim=4, k=3, n_tokens=4, seed=8)
    u = bernoulli_kv(4, 4, 8, seed=9)
    with emulator_process(where) as (port, proc):
        with Link(port, timeout=0.05, max_retries=3) as link:
            link.load(params)
            link.step(u)
            proc.kill()
            proc.wait(timeout=10)
            with pytest.raises((LinkClosed, LinkTimeout)):
                link.step(u)


@pytest.mark.parametrize(
    ("where", "sig"),
    [("--pty", signal.SIGKILL), ("--pty", signal.SIGSTOP), ("--tcp=127.0.0.1:0", signal.SIGSTOP)],
    ids=["pty-killed", "pty-hung", "tcp-hung"],
)
def test_dead_peer_mid_run_is_reported_within_the_bound(where: str, sig: int) -> None:
    """The emulator process dies (SIGKILL: the line closes) or hangs (SIGSTOP: the line stays
    open, nothing comes back) in the middle of a long `step` call; the link must raise within
    its dead-peer bound, not after its retransmission budget (~20 s with these settings)."""
    params = random_core_params(heads=4, head_dim=16, k=3, n_tokens=64, seed=8)
    u = bernoulli_kv(4000, 64, 64, seed=9)  # ~7 s of line time at 3 Mbaud
    with emulator_process(where, "--baud", "3000000") as (port, proc):
        with Link(port, timeout=0.1, max_retries=10) as link:
            link.load(params)
            link.step(u[:20])
            when: list[float] = []

            def strike() -> None:
                when.append(time.monotonic())
                proc.send_signal(sig)

            timer = threading.Timer(0.3, strike)
            timer.start()
            try:
                with pytest.raises((DeviceSilent, LinkClosed)) as err:
                    link.step(u)
            finally:
                timer.join()
                proc.kill()
            elapsed = time.monotonic() - when[0]
            bound = link.channel.dead_after()  # it adapts with the RTO during the run
    assert link.stats.steps < len(u) + 20  # it failed mid-run, not after it
    if sig == signal.SIGSTOP:
        assert isinstance(err.value, DeviceSilent) and "dead or hung" in str(err.value)
        assert elapsed >= 0.5 * bound  # the silence rule fired, not a closed line
    # slack for a loaded machine; the failure this guards against took 23.7 s or forever
    assert elapsed <= bound + link.channel.rto(0) + 2.0, (elapsed, bound, str(err.value))


def test_hil_cli_reports_progress_per_batch(capsys) -> None:
    spec = "drop=0.1,reset_after=4"
    rc = cli_main(["hil", "--port", f"spikeemu://?faults={spec}&seed=2", "--steps", "200",
                   "--tokens", "8", "--input", "random", "--timeout", "0.02",
                   "--progress", "lines", "--json"])
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert rc == 0 and res["bit_exact"]
    lines = [x for x in err.splitlines() if x.startswith("hil: ")]
    assert [x.split()[1] for x in lines] == ["64/200", "128/200", "192/200", "200/200"]
    assert f"reboots recovered {res['resets_recovered']}," in lines[-1]
