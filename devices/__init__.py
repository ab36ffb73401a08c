"""Event sources: simulated (gesture scenes, video to events), replay, UDP, live iniVation cameras.

Every source is an `EventSource`: a context manager that yields time-ordered `EVENT_DTYPE`
packets, knows its `sensor_size` (W, H, 2) and keeps `counters` of what it delivered and refused.
`InivationCamera` needs the optional extra `spikestream[inivation]` (dv-processing); importing
this package does not.
"""

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from spikestream import Recording, SensorSize

from .base import EventSource, Pacer, SourceCounters, split_packets
from .filters import (
    BackgroundActivityFilter,
    EventFilter,
    FilterChain,
    FilteredSource,
    HotPixelFilter,
    RefractoryFilter,
    background_activity,
    filter_from_spec,
    hot_pixel,
    refractory,
)
from .gestures import GESTURE_CLASSES, GestureScene, gesture_clip, gesture_frames, gesture_label
from .inivation import InivationCamera, dv_available
from .replay import ReplayCamera
from .simulated import SimulatedCamera
from .udp import UDPSink, UDPSource
from .video import SENSORS, DVSEmulator, DVSParams, image_sequence, lin_log, sensor_size_of

__all__ = [
    "BackgroundActivityFilter",
    "EventFilter",
    "FilterChain",
    "HotPixelFilter",
    "RefractoryFilter",
    "background_activity",
    "FilteredSource",
    "filter_from_spec",
    "hot_pixel",
    "refractory",
    "GESTURE_CLASSES",
    "SENSORS",
    "DVSEmulator",
    "DVSParams",
    "EventSource",
    "GestureScene",
    "InivationCamera",
    "Pacer",
    "ReplayCamera",
    "SimulatedCamera",
    "SourceCounters",
    "UDPSink",
    "UDPSource",
    "dv_available",
    "gesture_clip",
    "gesture_frames",
    "gesture_label",
    "image_sequence",
    "lin_log",
    "sensor_size_of",
    "source_from_spec",
    "split_packets",
]


def source_from_spec(
    spec: str,
    *,
    sensor_size: SensorSize | None = None,
    speed: float | None = 1.0,
    seed: int | None = 0,
    read_recording: Callable[[Path], Recording] | None = None,
    open_file: Callable[[Path], Iterable[np.ndarray]] | None = None,
) -> EventSource:
    """A source from a short text spec, as the command line gives it.

    `sim` (all eleven gestures, 2 s each) or `sim:LABEL,LABEL,...`; `frames:FOLDER` (image
    sequence to events); `file:PATH` (replayed; needs `open_file`, e.g.
    `spikestream.datasets.iter_events`, which streams the file in chunks, or `read_recording`,
    which reads it whole; the readers live in `spikestream.datasets`); `udp:[HOST:]PORT` (our
    format) or `aestream:[HOST:]PORT`;
    `inivation` or `inivation:SERIAL`. `sensor_size` is needed for UDP (default 128x128).
    """
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "sim":
        seq = [g.strip() for g in rest.split(",") if g.strip()] if rest else None
        labels = [int(g) if g.isdigit() else g for g in seq] if seq else None
        return SimulatedCamera.gestures(
            labels, sensor_size=sensor_size or "dvs128", speed=speed, seed=seed
        )
    if kind == "frames":
        if not rest:
            raise ValueError("frames:FOLDER needs a folder")
        return SimulatedCamera.from_folder(rest, sensor_size=sensor_size, speed=speed, seed=seed)
    if kind == "file":
        if not rest:
            raise ValueError("file:PATH needs a path")
        if open_file is not None:
            return ReplayCamera(lambda: open_file(Path(rest)), sensor_size, speed=speed)
        if read_recording is None:
            raise ValueError("file:PATH needs a reader (open_file) for the file format")
        return ReplayCamera(read_recording(Path(rest)), speed=speed)
    if kind in ("udp", "aestream"):
        host, _, port = rest.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"{spec!r}: expected {kind}:[HOST:]PORT")
        return UDPSource(
            host or "127.0.0.1",
            int(port),
            sensor_size or (128, 128, 2),
            format="spikestream" if kind == "udp" else "aestream",
        )
    if kind == "inivation":
        return InivationCamera(rest or None)
    raise ValueError(
        f"unknown source {spec!r}; use sim, sim:LABELS, frames:DIR, file:PATH, "
        "udp:[HOST:]PORT, aestream:[HOST:]PORT or inivation[:SERIAL]"
    )
