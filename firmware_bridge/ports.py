"""Where an emulated device can be reached: a pty pair, a TCP server, and an in-process port for
pyserial's ``spikeemu://`` URL (see `transports`).

All three carry the same bytes a USB-serial board would, so the host's `Link` runs unchanged on
``/dev/ttyACM0``, the pty path, ``socket://127.0.0.1:PORT`` and ``spikeemu://?...``. URL query
keys: ``faults`` (a fault spec, see faults.py), ``seed``, ``baud``, ``mtu``, ``window``,
``max_tokens``, ``max_dim``, ``core`` (``jit``, the default, or ``numpy``).
"""


from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import serial
from serial.urlhandler import protocol_socket

from spikestream.firmware_bridge.emulator import DeviceEmulator
from spikestream.firmware_bridge.faults import FaultConfig
from spikestream.firmware_bridge.intcore import CoreParams, IntCore
from spikestream.firmware_bridge.serving import EmulatorServer, fd_channel, socket_channel
from spikestream.firmware_bridge.transports import URL_SCHEME

#: The cores an emulator can run: both compute the same integers (tests hold them bit-exact).
CORES = ("jit", "numpy")


@dataclass
class EmulatorOptions:
    """Device and line settings shared by every transport."""

    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int = 0
    baud: float | None = None
    mtu: int = 8192
    window: int = 16
    max_tokens: int = 4096
    max_dim: int = 4096
    core: str = "jit"  # "jit": the compiled JitCore; "numpy": the reference IntCore

    def device(self) -> DeviceEmulator:
        if self.core not in CORES:
            raise ValueError(f"core {self.core!r}: expected one of {', '.join(CORES)}")
        factory: Callable[[CoreParams], IntCore] = IntCore
        if self.core == "jit":
            from spikestream.firmware_bridge.intcore_jit import JitCore  # compiles here, once

            factory = JitCore
        return DeviceEmulator(
            mtu=self.mtu, window=self.window, max_tokens=self.max_tokens,
            max_dim=self.max_dim, faults=self.faults, seed=self.seed, core_factory=factory,
        )

    @classmethod
    def from_url(cls, url: str) -> EmulatorOptions:
        """Options from ``spikeemu://?faults=drop=0.1,flip=0.05&seed=3&baud=921600``."""
        parts = urlsplit(url)
        if parts.scheme.lower() != URL_SCHEME:
            raise ValueError(f"{url!r}: expected a {URL_SCHEME}:// URL")
        known = {"faults", "seed", "baud", "mtu", "window", "max_tokens", "max_dim", "core"}
        opts = cls()
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            if key not in known:
                raise ValueError(f"{url!r}: unknown option {key!r}; known: {sorted(known)}")
            v = values[-1]
            try:
                if key == "faults":
                    opts.faults = FaultConfig.parse(v)
                elif key == "baud":
                    opts.baud = float(v) if v else None
                elif key == "core":
                    opts.core = v
                else:
                    setattr(opts, key, int(v))
            except ValueError as e:
                raise ValueError(f"{url!r}: option {key}={v!r}: {e}") from None
        return opts


# ---- pty --------------------------------------------------------------------------------------


class PtyEmulator:
    """An emulator behind a pseudo-terminal; open `path` like any serial port."""

    def __init__(
        self, options: EmulatorOptions | None = None, device: DeviceEmulator | None = None
    ) -> None:
        self.options = options or EmulatorOptions()
        self.device = device or self.options.device()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline before the host configures it
        self.path = os.ttyname(self._slave)
        read, write = fd_channel(self._master)
        self.server = EmulatorServer(self.device, read, write, self.options.baud, name="pty")

    def start(self) -> PtyEmulator:
        self.server.start()
        return self

    def close(self) -> None:
        self.server.stop()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PtyEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- TCP ----------------------------------------------------------------------------------------


class TcpEmulator:
    """An emulator listening on a TCP port, one client at a time; the device stays powered
    between clients (its sync, parameters and boot counter persist)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        options: EmulatorOptions | None = None,
        device: DeviceEmulator | None = None,
    ) -> None:
        self.options = options or EmulatorOptions()
        self.device = device or self.options.device()
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: EmulatorServer | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Accept clients one after the other until close()."""
        while not self._stop.is_set():
            r, _, _ = select.select([self._listener], [], [], 0.1)
            if not r:
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            read, write = socket_channel(conn)
            self._server = EmulatorServer(self.device, read, write, self.options.baud, name="tcp")
            self._server.start()
            while not self._stop.is_set() and not self._server.wait(0.1):
                pass
            self._server.stop()
            conn.close()

    def start(self) -> TcpEmulator:
        self._thread = threading.Thread(target=self.serve_forever, name="tcp-accept", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop()
        if self._thread is not None:
            self._thread.join(2.0)
        self._listener.close()

    def __enter__(self) -> TcpEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- in-process pyserial URL ---------------------------------------------------------------------


class InProcessSerial(protocol_socket.Serial):
    """pyserial port for ``spikeemu://?...``: a fresh emulator served in this process over a
    socketpair. Reading, writing and timeouts are pyserial's socket port's own code."""

    emulator: EmulatorServer | None = None

    def open(self) -> None:
        self.logger = None
        if self._port is None:
            raise serial.SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise serial.SerialException("Port is already open.")
        try:
            options = EmulatorOptions.from_url(self.portstr)
        except ValueError as e:
            raise serial.SerialException(str(e)) from None
        host_end, dev_end = socket.socketpair()
        host_end.setblocking(False)
        self._dev_end: socket.socket | None = dev_end
        read, write = socket_channel(dev_end)
        self.emulator = EmulatorServer(options.device(), read, write, options.baud, name="inproc")
        self.emulator.start()
        self._socket = host_end
        self._reconfigure_port()
        self.is_open = True
        self.reset_input_buffer()
        self.reset_output_buffer()

    def close(self) -> None:
        """Stop the emulator and close both ends (no reconnect delay: nothing to reconnect to)."""
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        for sock in (self._socket, getattr(self, "_dev_end", None)):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._socket = None
        self._dev_end = None
        self.is_open = False
