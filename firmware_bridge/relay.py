"""A fault-injecting relay between the host and any device: every target meets the same faults.

`FaultRelay(device_port, faults, seed)` opens a pseudo-terminal for the host and forwards bytes
both ways to `device_port` (a serial port, a pty path or `socket://HOST:PORT`), frame by frame:
it splits each direction at the 0x00 delimiters and passes every frame through the seeded
`FaultInjector` of `faults.py` (drop, flip, dup, garbage; host-to-device frames may stall).
Reboots are the device's own (`fw-host --reset-after`, QEMU's boot configuration, the
emulator's `reset_after`); the relay refuses `reset_after`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tty

import serial

from spikestream.firmware_bridge.faults import FaultConfig, FaultCounts, FaultInjector
from spikestream.firmware_bridge.protocol import Deframer
from spikestream.firmware_bridge.serving import fd_channel


class FaultRelay:
    """Host side: `path` (a pty). Device side: `device_port`. Faults per frame and direction."""

    def __init__(self, device_port: str, faults: FaultConfig | None = None, seed: int = 0) -> None:
        self.faults = faults or FaultConfig()
        if self.faults.reset_after:
            raise ValueError(
                "fault reset_after: a relay cannot reboot a device; give the device its own "
                "reset option (fw-host --reset-after, spikestream emulator --faults reset_after=N)"
            )
        self.device_port = device_port
        self.injector = FaultInjector(self.faults, seed)
        self._lock = threading.Lock()  # the injector's generators are shared by both directions
        try:
            self._dev = serial.serial_for_url(device_port, timeout=0.05)
        except (serial.SerialException, ValueError) as e:
            raise ValueError(f"fault relay: cannot open device port {device_port}: {e}") from None
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # held open: the master never sees a hang-up between clients
        self.path = os.ttyname(self._slave)
        self._read_host, self._write_host = fd_channel(self._master)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.frames = [0, 0]  # frames seen host->device, device->host

    @property
    def counts(self) -> FaultCounts:
        return self.injector.counts

    def start(self) -> FaultRelay:
        for name, fn in (("to-device", self._to_device), ("to-host", self._to_host)):
            t = threading.Thread(target=self._guard(fn), name=f"relay-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        with contextlib.suppress(OSError, serial.SerialException):
            self._dev.close()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _guard(self, fn):
        def run() -> None:
            try:
                fn()
            except (OSError, serial.SerialException) as e:  # a side went away
                if not self._stop.is_set():
                    self.error = e
                    self._stop.set()

        return run

    def _faulted(self, raw: bytes, inbound: bool) -> tuple[float, list[bytes]]:
        with self._lock:
            stall = self.injector.stall_seconds() if inbound else 0.0
            return stall, self.injector.apply(b"\x00" + raw + b"\x00", inbound=inbound)

    def _to_device(self) -> None:
        deframer = Deframer()
        while not self._stop.is_set():
            data = self._read_host(0.05)
            if not data:
                continue
            for raw in deframer.feed(data):
                self.frames[0] += 1
                stall, pieces = self._faulted(raw, inbound=True)
                if stall:
                    time.sleep(stall)
                for piece in pieces:
                    self._dev.write(piece)

    def _to_host(self) -> None:
        deframer = Deframer()
        while not self._stop.is_set():
            data = self._dev.read(max(1, self._dev.in_waiting))
            if not data:
                continue
            for raw in deframer.feed(data):
                self.frames[1] += 1
                _, pieces = self._faulted(raw, inbound=False)
                for piece in pieces:
                    self._write_host(piece)
