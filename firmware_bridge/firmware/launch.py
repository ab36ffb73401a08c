"""Build the firmware and serve its two builds as ports the host `Link` opens.

- `build()` runs this folder's Makefile (`fw-host`, and `fw-mps2-an385.elf` when the ARM tools
  are present); `missing_tools(target)` says what a target lacks.
- `serve_host(...)` runs `fw-host --pty` or `--tcp` and yields its port (a pty path or
  `socket://127.0.0.1:PORT`).
- `serve_qemu(...)` runs the Cortex-M3 image in `qemu-system-arm -M mps2-an385` with UART0 on a
  pty and yields the pty path once the firmware answers.
- `device_counters(port)` reads the CAPS extension (timesteps applied, time in the core).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import serial

from spikestream.firmware_bridge.protocol import (
    CAPS,
    HELLO,
    PROTOCOL_VERSION,
    Deframer,
    Frame,
    FrameError,
    MsgType,
    decode_frame,
    encode_frame,
)

FIRMWARE_DIR = Path(__file__).resolve().parent
BUILD_DIR = FIRMWARE_DIR / "build"
HOST_BIN = BUILD_DIR / "fw-host"
MPS2_ELF = BUILD_DIR / "fw-mps2-an385.elf"
QEMU = "qemu-system-arm"
#: Boot configuration word (hal_mps2.c) that QEMU's loader writes to the first bytes of RAM.
FW_CONFIG_MAGIC = 0x46574346
FW_CONFIG_ADDR = 0x20000000

TOOLS = {"host": ("make", "cc"), "mps2": ("make", "arm-none-eabi-gcc"), "qemu": (QEMU,)}


class FirmwareUnavailable(RuntimeError):
    """A firmware target cannot be built or run here (the message says why)."""


def missing_tools(target: str) -> str | None:
    """None when `target` ('host', 'mps2' or 'qemu': mps2 plus the emulator) can be built and
    run here, else a sentence naming what is missing."""
    need = TOOLS["host"] if target == "host" else TOOLS["mps2"]
    if target == "qemu":
        need = need + TOOLS["qemu"]
    missing = [t for t in need if shutil.which(t) is None]
    return f"{', '.join(missing)} not found on PATH" if missing else None


def build(
    targets: tuple[str, ...] = ("host", "mps2"), limits: str = "", build_dir: Path = BUILD_DIR
) -> None:
    """`make` the given targets of the firmware Makefile (incremental) into `build_dir`, with
    `limits` (e.g. "-DFW_MTU=64 -DFW_WINDOW=2", see fw_config.h); raises FirmwareUnavailable
    with the compiler's output on failure or when tools are missing."""
    for target in targets:
        why = missing_tools(target)
        if why:
            raise FirmwareUnavailable(f"firmware target {target}: {why}")
    proc = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR), f"BUILD={build_dir}", f"LIMITS={limits}",
         *targets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise FirmwareUnavailable(f"make {' '.join(targets)} failed:\n{proc.stdout}{proc.stderr}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def _first_line(proc: subprocess.Popen, what: str, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if r else ""
    if not line:
        err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
        raise FirmwareUnavailable(f"{what} printed no port within {timeout:.0f} s {err}".strip())
    return line


@contextlib.contextmanager
def serve_host(
    where: str = "pty", baud: float | None = None, reset_after: int = 0, binary: Path = HOST_BIN
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`fw-host --pty` or `--tcp 127.0.0.1:0` in a child process; yields (port, process)."""
    args = [str(binary), "--pty" if where == "pty" else "--tcp"]
    if where != "pty":
        args.append("127.0.0.1:0")
    if baud:
        args += ["--baud", str(baud)]
    if reset_after:
        args += ["--reset-after", str(reset_after)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield _first_line(proc, "fw-host"), proc
    finally:
        _stop(proc)


def qemu_command(elf: Path = MPS2_ELF, reset_after: int = 0, icount: bool = False) -> list[str]:
    """The QEMU command line that runs the Cortex-M3 image with UART0 on a new pty."""
    cmd = [QEMU, "-M", "mps2-an385", "-nographic", "-monitor", "none", "-serial", "pty",
           "-kernel", str(elf)]  # fmt: skip
    if icount:  # one instruction = 1 ns of virtual time: the timer then counts instructions
        cmd += ["-icount", "shift=0"]
    if reset_after:
        word = (reset_after << 32) | FW_CONFIG_MAGIC
        cmd += ["-device", f"loader,addr=0x{FW_CONFIG_ADDR:x},data=0x{word:016x},data-len=8"]
    return cmd


@contextlib.contextmanager
def serve_qemu(
    reset_after: int = 0, icount: bool = False, ready_timeout: float = 30.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The mps2-an385 image under QEMU; yields (pty path, process) once the firmware answers a
    PING (with NAK NOT_SYNCED: the device stays unsynced). The pty's slave end is held open
    meanwhile, so QEMU keeps its side connected between host sessions."""
    proc = subprocess.Popen(
        qemu_command(reset_after=reset_after, icount=icount),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    hold = -1
    try:
        line = _first_line(proc, QEMU)
        m = re.search(r"(/dev/pts/\d+)", line)
        if not m:
            raise FirmwareUnavailable(f"{QEMU}: unexpected output {line!r}")
        path = m.group(1)
        hold = os.open(path, os.O_RDWR | os.O_NOCTTY)
        _wait_answer(path, ready_timeout)
        yield path, proc
    finally:
        if hold >= 0:
            os.close(hold)
        _stop(proc)


def _exchange_raw(ser: serial.SerialBase, frame: Frame, timeout: float) -> Frame | None:
    """Send one frame; the first well-formed answer within `timeout`, else None."""
    ser.write(encode_frame(frame))
    deframer = Deframer()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for raw in deframer.feed(ser.read(4096)):
            with contextlib.suppress(FrameError):
                return decode_frame(raw)
    return None


def _wait_answer(port: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    with serial.serial_for_url(port, timeout=0.05) as ser:
        while time.monotonic() < end:
            if _exchange_raw(ser, Frame(MsgType.PING, 1, payload=b"up?"), 0.5) is not None:
                return
    raise FirmwareUnavailable(f"firmware on {port} did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class DeviceCounters:
    """The CAPS extension of the C firmware (fw_device.h)."""

    boot_counter: int
    steps_applied: int
    core_ticks: int
    tick_hz: int

    @property
    def core_seconds(self) -> float:
        return self.core_ticks / self.tick_hz


def device_counters(port: str, timeout: float = 2.0) -> DeviceCounters:
    """HELLO on `port` and decode the counters after the 23 bytes of CAPS. A HELLO leaves the
    device's parameters and state alone (the host's Link needs a new handshake afterwards)."""
    with serial.serial_for_url(port, timeout=0.05) as ser:
        for _ in range(5):
            seq = zlib.crc32(os.urandom(4)) & 0xFFFF
            hello = Frame(MsgType.HELLO, seq, payload=HELLO.pack(PROTOCOL_VERSION,
                                                                  PROTOCOL_VERSION))
            f = _exchange_raw(ser, hello, timeout)
            if f is not None and f.type == MsgType.CAPS and f.ack == seq:
                break
        else:
            raise FirmwareUnavailable(f"no CAPS from {port} after 5 HELLOs")
    ext = f.payload[CAPS.size :]
    if len(ext) < 16:
        raise FirmwareUnavailable(f"{port}: CAPS carries no firmware counters")
    boot = int.from_bytes(f.payload[14:18], "little")
    steps, lo, hi, hz = (int.from_bytes(ext[i : i + 4], "little") for i in range(0, 16, 4))
    return DeviceCounters(boot, steps, lo | hi << 32, hz)
