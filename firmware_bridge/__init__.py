"""The LRF-Dyn core on a device: host side (`link`, `offload`, `quantize`, `hil`), the wire
(`wire`, `protocol`), the device side (`intcore`, `emulator`, `faults`; numpy only) and where an
emulated device is served (`serving`, `ports`; `transports` opens any port from the host).

Public names are imported on first use, so that importing the device side never pulls in
pyserial or torch.
"""

from __future__ import annotations

import importlib

_HOME = {
    "Link": "link",
    "LinkError": "link",
    "LinkTimeout": "link",
    "LinkClosed": "link",
    "DeviceRefused": "link",
    "DeviceLimitError": "link",
    "DeviceResetLoop": "link",
    "DeviceSilent": "link",
    "ProtocolMismatch": "link",
    "ReplayMismatch": "link",
    "LinkStats": "link",
    "FrameChannel": "link",
    "CoreParams": "intcore",
    "IntCore": "intcore",
    "ARITH_ID": "intcore",
    "DeviceEmulator": "emulator",
    "FaultConfig": "faults",
    "EmulatorServer": "serving",
    "EmulatorOptions": "ports",
    "PtyEmulator": "ports",
    "TcpEmulator": "ports",
    "OffloadedCore": "offload",
    "offload": "offload",
    "quantize_lrf_dyn": "quantize",
    "run_conformance": "hil",
    "HilResult": "hil",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
