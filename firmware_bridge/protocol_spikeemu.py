"""pyserial URL handler for ``spikeemu://?faults=...&seed=...&baud=...``: an in-process emulator.

pyserial looks for a module named ``protocol_<scheme>`` in each package of
``serial.protocol_handler_packages``; `transports.register_url_scheme()` adds this package.
"""

from spikestream.firmware_bridge.ports import InProcessSerial as Serial

__all__ = ["Serial"]
