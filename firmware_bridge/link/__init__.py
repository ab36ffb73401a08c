"""Host side of the device link: `Link` (the device session) over a `FrameChannel` (reliable
frames over any pyserial port), and the errors they raise."""

from spikestream.firmware_bridge.link.channel import FrameChannel, LinkStats
from spikestream.firmware_bridge.link.errors import (
    DeviceLimitError,
    DeviceRefused,
    DeviceResetLoop,
    DeviceSilent,
    LinkClosed,
    LinkError,
    LinkTimeout,
    ProtocolMismatch,
    ReplayMismatch,
)
from spikestream.firmware_bridge.link.session import Link

__all__ = [
    "DeviceLimitError",
    "DeviceRefused",
    "DeviceResetLoop",
    "DeviceSilent",
    "FrameChannel",
    "Link",
    "LinkClosed",
    "LinkError",
    "LinkStats",
    "LinkTimeout",
    "ProtocolMismatch",
    "ReplayMismatch",
]
