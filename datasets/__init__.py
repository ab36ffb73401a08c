"""Event files (read, stream, write) and datasets, under the import name `spikestream.datasets`.

`FrameCache` and `FrameDataset` (torch datasets of binned frames) and `SyntheticGestures` (which
renders through the compiled simulated camera) load on first use, so the readers and
`spikestream info`/`convert` import neither torch nor numba.
"""

from typing import Any

from spikestream.datasets.download import DownloadError, MissingDataError
from spikestream.datasets.dvsgesture import DVSGesture
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
from spikestream.datasets.ncaltech101 import NCaltech101
from spikestream.datasets.nmnist import NMNIST

__all__ = [
    "DVSGesture",
    "DownloadError",
    "FrameCache",
    "FrameDataset",
    "MissingDataError",
    "NCaltech101",
    "NMNIST",
    "SyntheticGestures",
    "FORMATS",
    "EventStream",
    "Recorder",
    "detect_format",
    "iter_events",
    "open_events",
    "read_events",
    "write_events",
]


def __getattr__(name: str) -> Any:
    if name in ("FrameCache", "FrameDataset"):
        from spikestream.datasets import cache

        return getattr(cache, name)
    if name == "SyntheticGestures":  # it renders through spikestream.devices (numba)
        from spikestream.datasets.synthetic import SyntheticGestures

        return SyntheticGestures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
