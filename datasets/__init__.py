"""Event files (read, stream, write) and datasets, under the import name `spikestream.datasets`."""

from spikestream.datasets.hdf5 import Recorder
from spikestream.datasets.io import (
    FORMATS,
    EventStream,
    detect_format,
    iter_events,
    open_events,
    read_events,
    write_events,
)

__all__ = [
    "FORMATS",
    "EventStream",
    "Recorder",
    "detect_format",
    "iter_events",
    "open_events",
    "read_events",
    "write_events",
]
