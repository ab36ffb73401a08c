"""The C99 firmware, built here (host program and Cortex-M3 image), against the HIL suite of
tests/test_hil.py: fw-host on a pty and on TCP, the mps2-an385 image under QEMU, faults through
`spikestream fault-relay`, reboots, and an offloaded model on fw-host equal to the quantized
model. Skipped, naming the missing tool, where a compiler or QEMU is absent."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_hil import (
    LARGE,
    SMALL,
    check_conformance,
    check_faults,
    check_protocol_script,
    check_reboot_recovery,
    serve_target,
)
from test_offload import small_model

from spikestream.firmware_bridge.firmware import launch
from spikestream.firmware_bridge.hil import bernoulli_kv, random_core_params
from spikestream.firmware_bridge.intcore import IntCore
from spikestream.firmware_bridge.link import Link
from spikestream.firmware_bridge.offload import OffloadedCore, offload
from spikestream.firmware_bridge.quantize import quantize_cores

RELAY_ONLY = [
    sys.executable,
    "-c",
    "import argparse, sys; from spikestream.cli import fault_relay; p = argparse.ArgumentParser();"
    " fault_relay.register(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))",
]


@pytest.fixture
def host(firmware) -> str:
    firmware("host")
    return "host"


@pytest.fixture
def qemu(firmware) -> str:
    firmware("qemu")
    return "qemu"


def test_build_is_strict_c99_and_reports_sizes(host: str) -> None:
    # the core and protocol sources include nothing beyond <stdint.h>, <stddef.h>, <string.h>
    portable = ("fw_core.c", "fw_wire.c", "fw_device.c", "fw_core.h", "fw_wire.h",
                "fw_device.h", "fw_config.h", "hal.h")  # fmt: skip
    for name in portable:
        for line in (launch.FIRMWARE_DIR / name).read_text().splitlines():
            if line.startswith("#include <"):
                assert line.split()[1] in ("<stdint.h>", "<stddef.h>", "<string.h>"), (name, line)
    text = (launch.FIRMWARE_DIR / "fw_device.c").read_text() + (
        launch.FIRMWARE_DIR / "fw_core.c"
    ).read_text()
    assert "malloc" not in text and "free(" not in text
    out = subprocess.run(["make", "-C", str(launch.FIRMWARE_DIR), "size"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "fw-host" in out and "text" in out


@pytest.mark.parametrize("where", ["pty", "tcp"])
def test_host_build_conformance(host: str, where: str) -> None:
    with serve_target("host", where) as port:
        check_conformance(port, "host", SMALL, steps=3000)
        check_conformance(port, "host", LARGE, steps=300, seed=3)


def test_host_build_protocol_matches_the_emulator(host: str) -> None:
    with serve_target("host") as port:
        check_protocol_script(port, "host")


def test_host_build_faults_through_the_relay_cli(host: str) -> None:
    with launch.serve_host("tcp") as (device, _):
        proc = subprocess.Popen(
            [*RELAY_ONLY, "fault-relay", "--port", device, "--faults",
             "drop=0.05,flip=0.05,dup=0.05,garbage=0.05,stall=20", "--seed", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            path = proc.stdout.readline().strip()
            assert path.startswith("/dev/"), proc.stderr.read()
            check_conformance_through(path)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "dropped" in err and "flipped" in err


def check_conformance_through(port: str) -> None:
    params = random_core_params(*SMALL, seed=4)
    u = bernoulli_kv(400, SMALL[3], SMALL[0] * SMALL[1], rate=0.5, seed=104)
    ref = IntCore(params)
    want = np.stack([ref.step(x) for x in u])
    with Link(port, timeout=0.05, max_retries=20) as link:
        link.load(params)
        got = np.stack(link.step(u[:200]) + link.step(u[200:]))
        assert np.array_equal(link.read_state(), ref.state())
        assert link.retransmits > 0
    assert np.array_equal(got, want)


def test_host_build_faults_and_reboots(host: str) -> None:
    with serve_target("host") as port:
        check_faults(port, "host")
    check_reboot_recovery("host")


def test_host_build_baud_limit_is_honest(host: str) -> None:
    # 2000 PING bytes (inside the MTU) cross the line twice; at 300 kbaud that is >= 0.13 s
    payload = bytes(range(256)) * 7 + b"x" * 208
    with launch.serve_host("pty", baud=300000) as (port, _), Link(port, timeout=1.0) as link:
        link.hello()
        sent, received = link.stats.bytes_sent, link.stats.bytes_received
        rtt = link.ping(payload)
        wire = link.stats.bytes_sent - sent + link.stats.bytes_received - received
    line = wire * 10 / 300000
    # at least the line time (the limit is honest); the upper bound leaves room for a loaded
    # machine's scheduling while still catching a rate several times too slow
    assert line <= rtt < 3 * line + 0.5, (rtt, line)


def test_host_build_at_small_limits(host: str, tmp_path) -> None:
    """The same source built for a small device (MTU 64, window 2, D <= 16): CAPS says so, a
    model over the limits is refused, one that fits runs bit-exact, one timestep a frame."""
    from spikestream.firmware_bridge.link import DeviceLimitError

    launch.build(("host",), "-DFW_MTU=64 -DFW_WINDOW=2 -DFW_MAX_DIM=16 -DFW_MAX_K=4",
                 tmp_path)  # fmt: skip
    with launch.serve_host(binary=tmp_path / "fw-host") as (port, _):
        with Link(port, timeout=0.05) as link:
            caps = link.hello()
            with pytest.raises(DeviceLimitError):
                link.load(random_core_params(2, 16, 3, 16, seed=1))  # D = 32
        assert (caps.mtu, caps.window, caps.max_dim) == (64, 2, 16)
        check_conformance(port, "host", SMALL, steps=500)  # 32 bytes a step: 1 per frame


def test_qemu_build(qemu: str) -> None:
    with serve_target("qemu") as port:
        check_protocol_script(port, "qemu")
        check_conformance(port, "qemu", SMALL, steps=1000)
        check_faults(port, "qemu", steps=150)
        counters = launch.device_counters(port)
    assert counters.boot_counter == 1 and counters.steps_applied >= 1150
    assert counters.tick_hz == 25_000_000 and counters.core_ticks > 0
    check_reboot_recovery("qemu", steps=24)


def test_offloaded_model_on_the_host_build_equals_the_quantized_model(host: str) -> None:
    model = small_model(depth=2)
    ref = quantize_cores(copy.deepcopy(model))
    x = (torch.rand(6, 1, 2, 16, 16, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with serve_target("host") as a, serve_target("host", "tcp") as b:
        dev = offload(copy.deepcopy(model), [a, b], timeout=0.2)
        cores = [m for m in dev.modules() if isinstance(m, OffloadedCore)]
        with torch.no_grad():
            want, got = ref(x), dev(x)
            stepped = {}
            for name, m in (("ref", ref), ("dev", dev)):
                state = m.init_state(1)
                outs = []
                for frame in x:
                    logits, state = m.step(frame, state)
                    outs.append(logits)
                stepped[name] = torch.stack(outs)
            fired = [c.link.read_state() for c in cores]
        for c in cores:
            c.link.close()
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # whole sequence
    torch.testing.assert_close(stepped["dev"], stepped["ref"], rtol=0, atol=0)  # step by step
    assert any(np.abs(s).sum() > 0 for s in fired)  # the device cores carried state


def test_stream_cli_offloads_to_the_host_build(host: str, tmp_path, capsys) -> None:
    from spikestream.cli import main
    from spikestream.pipeline import create_model
    from spikestream.pipeline.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("tiny", attention="lrf_dyn", input_size=(32, 32), num_classes=11,
                         embed_dim=16, heads=2, depth=1).eval()  # fmt: skip
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, model, extra={"meta": {"binning": {"time_window": 50_000}}})
    with serve_target("host") as port:
        code = main(["stream", "--source", "sim:Hand clapping", "--checkpoint", str(ck),
                     "--speed", "0", "--seconds", "20", "--offload", port, "--json"])
        counters = launch.device_counters(port)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["steps"] > 0
    assert counters.steps_applied >= summary["steps"]  # every step ran on the device
