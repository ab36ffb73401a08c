"""Event sources: simulated (gesture scenes, video to events), replay, UDP, live iniVation cameras.

Every source is an `EventSource`: a context manager that yields time-ordered `EVENT_DTYPE`
packets, knows its `sensor_size` (W, H, 2) and keeps `counters` of what it delivered and refused.
`InivationCamera` needs the optional extra `spikestream[inivation]` (dv-processing); importing
this package does not.
"""

from .base import EventSource, Pacer, SourceCounters, split_packets
from .gestures import GESTURE_CLASSES, GestureScene, gesture_clip, gesture_frames, gesture_label
from .inivation import InivationCamera, dv_available
from .replay import ReplayCamera
from .simulated import SimulatedCamera
from .udp import UDPSink, UDPSource
from .video import SENSORS, DVSEmulator, DVSParams, image_sequence, lin_log, sensor_size_of

__all__ = [
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
    "split_packets",
]
