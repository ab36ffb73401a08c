"""spikestream: DVS event streams into an incremental spiking vision transformer.

The core package holds the event contract; readers live in `spikestream.datasets`, sources in
`spikestream.devices`, binning and the model in `spikestream.pipeline`, and the device link in
`spikestream.firmware_bridge`.
"""

from spikestream.events import (
    EVENT_DTYPE,
    EventFormatError,
    Recording,
    SensorSize,
    as_events,
    empty_events,
    make_events,
    validate_events,
)

__version__ = "0.1.0"

__all__ = [
    "EVENT_DTYPE",
    "EventFormatError",
    "Recording",
    "SensorSize",
    "as_events",
    "empty_events",
    "make_events",
    "validate_events",
]
