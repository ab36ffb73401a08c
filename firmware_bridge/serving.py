"""Running a DeviceEmulator over a byte channel: a receive, a device and a transmit thread, each
line direction paced at 10 bits per byte when a baud rate is given (a real UART receives and sends
in the background while the CPU computes), and the channels over a file descriptor or a socket.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable

from spikestream.firmware_bridge.emulator import DeviceEmulator

BITS_PER_BYTE = 10  # UART 8N1: start bit, 8 data bits, stop bit

ReadFn = Callable[[float], "bytes | None"]  # wait up to t seconds; b"" on timeout, None on EOF
WriteFn = Callable[[bytes], None]


class EmulatorServer:
    """Serves a DeviceEmulator over a byte channel until stopped or the channel closes.

    With `baud`, each direction carries at most baud/10 bytes per second: received bytes reach
    the device only after their line time, and frames leave in chunks, each written when its last
    byte would have left the wire.
    """

    def __init__(
        self,
        device: DeviceEmulator,
        read: ReadFn,
        write: WriteFn,
        baud: float | None = None,
        chunk: int = 1024,
        name: str = "emulator",
    ) -> None:
        if baud is not None and baud <= 0:
            raise ValueError(f"baud {baud} must be > 0")
        self.device, self._read, self._write = device, read, write
        self.baud, self.chunk, self.name = baud, chunk, name
        self.stop_event = threading.Event()
        self.closed = threading.Event()  # the channel reached EOF or failed
        self.error: BaseException | None = None
        self._rxq: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._txq: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # serialises the device between rx and device threads
        self._threads: list[threading.Thread] = []

    @property
    def byte_time(self) -> float:
        return BITS_PER_BYTE / self.baud if self.baud else 0.0

    def start(self) -> EmulatorServer:
        targets = [self._rx_loop, self._tx_loop] + ([self._dev_loop] if self.baud else [])
        for fn in targets:
            t = threading.Thread(target=self._guard(fn), name=f"{self.name}-{fn.__name__}")
            t.daemon = True
            t.start()
            self._threads.append(t)
        return self

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except OSError as e:  # the channel went away
                self.error = e
                self.closed.set()
            except BaseException as e:  # noqa: BLE001 - reported through .error, never swallowed
                self.error = e
                self.closed.set()
                raise

        return run

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the channel closes (or stop); True when it did."""
        return self.closed.wait(timeout)

    def _running(self) -> bool:
        return not (self.stop_event.is_set() or self.closed.is_set())

    def _rx_loop(self) -> None:
        rx_free = 0.0  # virtual time the receive line becomes idle
        t_empty = time.monotonic()  # last moment the input was seen empty
        while self._running():
            t0 = time.monotonic()
            data = self._read(0.05)
            t1 = time.monotonic()
            if data is None:
                self.closed.set()
                return
            if not data:
                t_empty = t1
                continue
            if not self.baud:
                self._deliver(data)
                continue
            # Bytes began arriving no earlier than the last time the input was seen empty.
            start = max(rx_free, t_empty if t1 - t0 < 1e-3 else t1)
            for i in range(0, len(data), self.chunk):
                piece = data[i : i + self.chunk]
                rx_free = max(rx_free, start) + len(piece) * self.byte_time
                _sleep_until(rx_free, self.stop_event)
                self._rxq.put(piece)
            t_empty = rx_free

    def _dev_loop(self) -> None:
        while self._running():
            try:
                data = self._rxq.get(timeout=0.05)
            except queue.Empty:
                continue
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        with self._lock:
            frames = self.device.receive(data)
        now = time.monotonic()
        for f in frames:
            self._txq.put((now, f))

    def _tx_loop(self) -> None:
        tx_free = 0.0
        while self._running():
            try:
                t_ready, frame = self._txq.get(timeout=0.05)
            except queue.Empty:
                continue
            if not self.baud:
                self._write(frame)
                continue
            start = max(tx_free, t_ready)
            for i in range(0, len(frame), self.chunk):
                piece = frame[i : i + self.chunk]
                tx_free = start = start + len(piece) * self.byte_time
                _sleep_until(tx_free, self.stop_event)
                self._write(piece)


def _sleep_until(t: float, stop: threading.Event) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        stop.wait(delay) if delay > 0.05 else time.sleep(delay)


# ---- file-descriptor and socket channels ----------------------------------------------------


def fd_channel(fd: int) -> tuple[ReadFn, WriteFn]:
    """read/write functions over a file descriptor (the pty master), made non-blocking."""
    os.set_blocking(fd, False)

    def read(timeout: float) -> bytes | None:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return b""
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:  # no slave open: nothing to read yet
                return b""
            raise

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [fd], [], 0.5)
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue

    return read, write


def socket_channel(
    sock: socket.socket,
) -> tuple[ReadFn, WriteFn]:
    """read/write functions over a connected stream socket; read returns None at EOF."""

    def read(timeout: float) -> bytes | None:
        r, _, _ = select.select([sock], [], [], timeout)
        if not r:
            return b""
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        return data or None

    def write(data: bytes) -> None:
        sock.sendall(data)

    return read, write
