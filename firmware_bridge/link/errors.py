"""What can go wrong on a link to a device: the errors `Link` raises."""

from __future__ import annotations

from spikestream.firmware_bridge.protocol import NakReason


class LinkError(Exception):
    """The link to the device failed and could not recover."""


class LinkTimeout(LinkError):
    """The device stopped answering (after all retransmissions)."""


class DeviceSilent(LinkTimeout):
    """Nothing came from the device, and it took no bytes, for longer than the dead-peer bound
    (`FrameChannel.dead_after`): the device died or hung without closing the line."""


class LinkClosed(LinkError):
    """The port failed or closed under the link."""


class DeviceRefused(LinkError):
    """The device answered NAK with a reason the host cannot retry away."""

    def __init__(self, reason: int, detail: str, request: str) -> None:
        self.reason, self.detail, self.request = reason, detail, request
        name = NakReason(reason).name if reason in NakReason._value2member_map_ else str(reason)
        super().__init__(f"device refused {request}: {name}" + (f" ({detail})" if detail else ""))


class ProtocolMismatch(LinkError):
    """The device speaks another protocol or arithmetic version, or answered nonsense."""


class DeviceLimitError(LinkError):
    """The model does not fit the device's advertised limits."""


class DeviceResetLoop(LinkError):
    """The device keeps rebooting before the link can make progress."""


class ReplayMismatch(LinkError):
    """After a device reboot, replayed steps gave outputs other than the first time."""


class DeviceRebooted(Exception):
    """Raised by the channel, caught by the session: the device rebooted (or lost sync), so the
    session recovers and replays. Not a LinkError: it never reaches the caller."""

    def __init__(self, boot_counter: int) -> None:
        super().__init__(f"device reset (boot counter {boot_counter})")
        self.boot_counter = boot_counter
