"""How the host reaches a device: any pyserial port or URL, plus the ``spikeemu://`` scheme.

``/dev/ttyACM0``, a pty path, ``socket://127.0.0.1:PORT`` and ``spikeemu://?faults=...`` all
open through `open_port`. The in-process scheme is registered with pyserial by adding this
package to ``serial.protocol_handler_packages``; pyserial then imports ``protocol_spikeemu`` from
it, which builds the emulator (`ports.InProcessSerial`) only when such a URL is opened. This
module imports neither the emulator nor the device core.
"""

from __future__ import annotations

import serial

URL_SCHEME = "spikeemu"
HANDLER_PACKAGE = "spikestream.firmware_bridge"


def register_url_scheme() -> None:
    """Make ``serial.serial_for_url("spikeemu://...")`` open an in-process emulator."""
    if HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(HANDLER_PACKAGE)


def open_port(url: str, baudrate: int = 115200) -> serial.SerialBase:
    """Open a port or URL non-blocking (reads return at once); pyserial's errors pass through."""
    register_url_scheme()
    return serial.serial_for_url(url, baudrate=baudrate, timeout=0)
