"""Hardware-in-the-loop conformance: `spikestream emulator` on a real pty and TCP in a separate
process, `spikestream hil` against it, the line-rate limit, real N-MNIST inputs, and the same
checks against a board given with --port (tests marked `hardware`).

The target suite (`check_*`, the `test_target_*` tests) runs against the device chosen with
`--target`: the Python emulator (default), the C firmware's host build, or its Cortex-M3 build
under QEMU. Faults come from a relay between host and device, so every target meets the same
ones; tests/test_firmware.py runs the suite against both C builds in the default run."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spikestream.cli import EXIT_DEVICE
from spikestream.cli import main as cli_main
from spikestream.firmware_bridge.emulator import DeviceEmulator
from spikestream.firmware_bridge.faults import FaultConfig
from spikestream.firmware_bridge.hil import (
    bernoulli_kv,
    events_kv,
    random_core_params,
    run_conformance,
)
from spikestream.firmware_bridge.intcore import IntCore
from spikestream.firmware_bridge.link import DeviceSilent, Link, LinkClosed
from spikestream.firmware_bridge.protocol import (
    CAPS,
    CHUNK,
    COMMIT,
    HELLO,
    READ_STATE,
    STEP_HEAD,
    Caps,
    Deframer,
    Frame,
    MsgType,
    NakReason,
    decode_frame,
    encode_frame,
    pack_spikes,
)
from spikestream.firmware_bridge.relay import FaultRelay

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


def _hil_peak_rss_after(steps: int, batches: int) -> tuple[int, str]:
    """Peak RSS (VmHWM, bytes) of `spikestream hil --steps STEPS` on the in-process emulator once
    `batches` batches are done (then it is stopped), and its last progress line."""
    proc = subprocess.Popen(
        [*CLI, "hil", "--port", "spikeemu://?seed=1", "--steps", str(steps), "--input", "random",
         "--tokens", "8", "--heads", "2", "--head-dim", "4", "--progress", "lines"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(240, proc.kill)
    guard.start()
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(batches)]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(int(ln.split()[1]) * 1024 for ln in status.splitlines()
                   if ln.startswith("VmHWM"))
    finally:
        guard.cancel()
        proc.kill()
        proc.wait(timeout=30)
    return hwm, lines[-1]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_hil_memory_does_not_grow_with_steps() -> None:
    """Inputs are made batch by batch: 2,000,000 timesteps (2 GiB of random draws if made up
    front at this small shape, 61 GiB at the default one) cost what 2,000 do."""
    small, line_small = _hil_peak_rss_after(2_000, 6)
    large, line_large = _hil_peak_rss_after(2_000_000, 6)
    assert line_small.startswith("hil: 384/2000 steps") and \
        line_large.startswith("hil: 384/2000000 steps"), (line_small, line_large)
    assert large - small < 32 << 20, (small, large)


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
# ---- the target suite: one set of checks for every device ----------------------------------

#: Base retransmission timeout per target (the Python emulator computes up to 255 timesteps per
#: frame in numpy; QEMU's UART model moves ~25 kB/s).
LINK_TIMEOUT = {"python": 0.5, "host": 0.05, "qemu": 0.3}
#: With faults the frames are short (10 timesteps), so every target answers quickly.
FAULT_TIMEOUT = {"python": 0.1, "host": 0.05, "qemu": 0.3}
SMALL = (2, 8, 3, 16)  # heads, head_dim, k, tokens: 32 bytes per timestep
LARGE = (4, 16, 3, 64)  # 512 bytes per timestep; this seed's state saturates


@pytest.fixture
def target(request, firmware) -> str:
    """The device kind given with --target (built first when it is the C firmware)."""
    kind = request.config.getoption("--target")
    if kind != "python":
        firmware(kind)
    return kind


@contextlib.contextmanager
def serve_target(kind: str, where: str = "pty", reset_after: int = 0) -> Iterator[str]:
    """A fresh device of `kind` ('python', 'host', 'qemu') on a pty (or TCP: 'tcp'); yields the
    port the host opens. `reset_after=N` makes it reboot after every N-th STEP frame."""
    from spikestream.firmware_bridge.firmware import launch

    if kind == "python":
        args = ["--pty"] if where == "pty" else ["--tcp", "127.0.0.1:0"]
        if reset_after:
            args += ["--faults", f"reset_after={reset_after}"]
        with emulator_process(*args) as (port, _):
            yield port
    elif kind == "host":
        with launch.serve_host(where, reset_after=reset_after) as (port, _):
            yield port
    elif kind == "qemu":
        assert where == "pty", "the QEMU build serves UART0 on a pty"
        with launch.serve_qemu(reset_after=reset_after) as (port, _):
            yield port
    else:
        raise ValueError(f"unknown target {kind!r}")


def case(shape: tuple[int, int, int, int], steps: int, seed: int) -> tuple:
    """Parameters that fire at moderate rates, inputs, and the reference outputs and state."""
    heads, head_dim, k, n = shape
    params = random_core_params(heads, head_dim, k, n, seed=seed)
    u = bernoulli_kv(steps, n, heads * head_dim, rate=0.5, seed=seed + 100)
    ref = IntCore(params)
    s = np.stack([ref.step(x) for x in u])
    return params, u, s, ref.state()


def check_conformance(port: str, kind: str, shape=SMALL, steps: int = 2000, seed: int = 4) -> None:
    """Handshake, load, `steps` timesteps: every output and the final state equal IntCore's."""
    params, u, want, state = case(shape, steps, seed)
    with Link(port, timeout=LINK_TIMEOUT[kind]) as link:
        caps = link.hello()
        link.load(params)
        got = np.stack(link.step(u))
        back = link.read_state()
    assert caps.arith_id == 1 and caps.version == 1
    assert np.array_equal(got, want), f"{int((got != want).any(axis=(1, 2)).sum())} steps differ"
    assert 0.02 < want.mean() < 0.98  # both spikes and silence were exercised
    assert np.array_equal(back, state)


def check_faults(port: str, kind: str, steps: int = 300) -> None:
    """Through a relay that drops, flips, duplicates, garbles and stalls frames both ways, the
    outputs and the final state still equal IntCore's."""
    params, u, want, state = case(SMALL, steps, seed=4)
    faults = FaultConfig(drop=0.1, flip=0.1, dup=0.1, garbage=0.1, stall=20, stall_p=0.05)
    with FaultRelay(port, faults, seed=11) as relay:
        with Link(relay.path, timeout=FAULT_TIMEOUT[kind], max_retries=20) as link:
            res = run_conformance(link, params, u, batch=10)
            back = link.read_state()
        c = relay.counts
    assert res.bit_exact and res.lost == 0 and res.steps == steps, res
    assert res.retransmits > 0
    assert np.array_equal(back, state)
    assert c.dropped + c.flipped + c.duplicated + c.garbage >= 10, c  # the faults were there


def check_reboot_recovery(kind: str, steps: int = 48) -> None:
    """A device that reboots after every 3rd STEP frame: the host reloads and replays, and the
    outputs equal IntCore's as if nothing happened."""
    params, u, want, _ = case(SMALL, steps, seed=4)
    with serve_target(kind, reset_after=3) as port:
        with Link(port, timeout=LINK_TIMEOUT[kind], steps_per_frame=4,
                  checkpoint_every=8) as link:
            res = run_conformance(link, params, u, batch=12)
            boot = link.hello().boot_counter
    assert res.bit_exact and res.lost == 0, res
    assert res.resets_recovered >= 2 and boot >= 3


# The scripted session: each request with what it checks. Sequence numbers are explicit.
def _session(params_blob: bytes, bad_blob: bytes, state_bytes: bytes, bps: int) -> list:
    rng = np.random.default_rng(5)
    spikes = [pack_spikes(rng.random((16, 16)) < 0.5) for _ in range(8)]
    assert all(len(x) == bps for x in spikes)
    hello = HELLO.pack(1, 1)

    def chunk(off: int, blob: bytes, n: int) -> bytes:
        return CHUNK.pack(off, len(blob)) + blob[off : off + n]

    S = MsgType
    seq = iter(range(101, 1000))

    def nxt(mtype: int, payload: bytes = b"") -> Frame:
        return Frame(mtype, next(seq), payload=payload)

    step3 = STEP_HEAD.pack(3, 1) + b"".join(spikes[:3])
    script = [
        ("ping unsynced", Frame(S.PING, 5, payload=b"x")),
        ("hello bad version", Frame(S.HELLO, 99, payload=HELLO.pack(2, 3))),
        ("hello", Frame(S.HELLO, 100, payload=hello)),
        ("no params", nxt(S.RESET_STATE)),
        ("params chunk 1", nxt(S.LOAD_PARAMS, chunk(0, params_blob, 30))),
        ("params chunk 2", nxt(S.LOAD_PARAMS, chunk(30, params_blob, 99))),
        ("commit bad crc", nxt(S.COMMIT, COMMIT.pack(0, 1234))),
        ("commit", nxt(S.COMMIT, COMMIT.pack(0, zlib.crc32(params_blob)))),
        ("step 3 + crc", nxt(S.STEP, step3)),
        ("step 2", nxt(S.STEP, STEP_HEAD.pack(2, 0) + b"".join(spikes[3:5]))),
    ]
    first = script[-2][1].seq
    script += [
        ("duplicate", Frame(S.STEP, first, payload=step3)),
        ("gap", Frame(S.PING, first + 3, payload=b"gap")),
        ("gap again", Frame(S.PING, first + 4, payload=b"gap")),
        ("read state", nxt(S.READ_STATE, READ_STATE.pack(0, 1000))),
        ("read state tail", nxt(S.READ_STATE, READ_STATE.pack(90, 7))),
        ("load state", nxt(S.LOAD_STATE, CHUNK.pack(0, len(state_bytes)) + state_bytes)),
        ("commit state", nxt(S.COMMIT, COMMIT.pack(1, zlib.crc32(state_bytes)))),
        ("step after load", nxt(S.STEP, STEP_HEAD.pack(1, 1) + spikes[5])),
        ("bad shape", nxt(S.STEP, STEP_HEAD.pack(2, 1) + spikes[6])),
        ("bad params", nxt(S.LOAD_PARAMS, chunk(0, bad_blob, 999))),
        ("commit bad params", nxt(S.COMMIT, COMMIT.pack(0, zlib.crc32(bad_blob)))),
        ("old params kept", nxt(S.STEP, STEP_HEAD.pack(1, 1) + spikes[7])),
        ("too large", nxt(S.LOAD_PARAMS, CHUNK.pack(0, (1 << 20) + 1) + b"L")),
        ("unknown type", nxt(0x42)),
        ("bad message", nxt(S.READ_STATE, b"\x00")),
        ("reset state", nxt(S.RESET_STATE)),
        ("ping", nxt(S.PING, bytes(range(1, 200)))),
        *[(f"filler {i}", nxt(S.PING, bytes([i]))) for i in range(40)],
        ("stale", Frame(S.PING, 101, payload=b"old")),
        ("corrupt", None),
        ("rehello keeps params", Frame(S.HELLO, 500, payload=hello)),
        ("step after rehello", Frame(S.STEP, 501, payload=STEP_HEAD.pack(1, 1) + spikes[0])),
    ]
    return script


def _answers(ser, raw: bytes, wait: float, quiet: float) -> list[bytes]:
    """Send `raw`; the frames that come back (wait up to `wait` for the first, then `quiet`)."""
    ser.write(raw)
    deframer, got = Deframer(), []
    end = time.monotonic() + wait
    while time.monotonic() < end:
        data = ser.read(4096)
        got += [b"\x00" + r + b"\x00" for r in deframer.feed(data)]
        if got and not data:
            end = min(end, time.monotonic() + quiet)
    return got


def check_protocol_script(port: str, kind: str) -> None:
    """A scripted session covering every message, NAK reason and sequence rule; each answer
    must match the Python reference emulator's answer to the same bytes (type, ack, payload;
    for NAKs the reason, boot counter and expected seq; for CAPS its 23 bytes), and a
    duplicate must be answered byte for byte as the first time, from the cache."""
    import serial

    params = random_core_params(2, 8, 3, 16, seed=4)
    blob = params.to_blob()
    bad = bytearray(blob)
    bad[-2:] = b"\x00\x00"  # theta 0
    state = np.random.default_rng(6).integers(-3000, 3000, (2, 3, 8)).astype("<i2").tobytes()
    script = _session(blob, bytes(bad), state, 32)
    wait = 3.0 if kind == "qemu" else 1.0
    got: list[list[bytes]] = []
    requests: list[bytes] = []
    with serial.serial_for_url(port, timeout=0.02) as ser:
        ser.reset_input_buffer()
        for name, frame in script:
            if frame is None:  # a frame whose CRC is damaged
                raw = bytearray(encode_frame(Frame(MsgType.PING, 999, payload=b"c")))
                raw[-3] ^= 0x10
                raw = bytes(raw)
            else:
                raw = encode_frame(frame)
            silent = name == "gap again"
            requests.append(raw)
            got.append(_answers(ser, raw, 0.3 if silent else wait, 0.02))
    caps = Caps.unpack(decode_frame(got[2][0][1:-1]).payload)
    ref = DeviceEmulator(mtu=caps.mtu, window=caps.window, max_tokens=caps.max_tokens,
                         max_dim=caps.max_dim)
    # the device's power-on boot counter (1 for a fresh device) is the reference's too
    ref.boot_counter = caps.boot_counter - 1
    ref.reboot()
    ref.stats.reboots = 0
    for (name, _), raw, answers in zip(script, requests, got, strict=True):
        want = ref.receive(raw)
        assert len(answers) == len(want), (name, answers, want)
        for a, w in zip(answers, want, strict=True):
            fa, fw = decode_frame(a[1:-1]), decode_frame(w[1:-1])
            assert (fa.type, fa.ack, fa.flags) == (fw.type, fw.ack, fw.flags), name
            if fa.type == MsgType.NAK:
                assert fa.payload[:7] == fw.payload[:7], (name, fa.payload, fw.payload)
            elif fa.type == MsgType.CAPS:
                assert fa.payload[: CAPS.size] == fw.payload[: CAPS.size], name
            else:
                assert fa.payload == fw.payload, name
    by_name = {name: answers for (name, _), answers in zip(script, got, strict=True)}
    assert by_name["duplicate"] == by_name["step 3 + crc"]  # byte for byte, from the cache
    naks = {name: decode_frame(a[0][1:-1]).payload[0] for name, a in by_name.items()
            if a and decode_frame(a[0][1:-1]).type == MsgType.NAK}
    assert set(naks.values()) == set(NakReason), naks  # every reason was produced
    assert by_name["gap again"] == []  # one NAK per gap


def test_target_protocol_script(target: str) -> None:
    with serve_target(target) as port:
        check_protocol_script(port, target)


def test_target_conformance(target: str) -> None:
    with serve_target(target) as port:
        check_conformance(port, target, SMALL, steps=2000)
        check_conformance(port, target, LARGE, steps=100 if target == "qemu" else 300, seed=3)


def test_target_faults_through_relay(target: str) -> None:
    with serve_target(target) as port:
        check_faults(port, target)


def test_target_reboot_recovery(target: str) -> None:
    check_reboot_recovery(target)
