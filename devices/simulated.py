"""`SimulatedCamera`: a DVS emulated from rendered gesture scenes or from video frames."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from spikestream import SensorSize

from .base import EventSource, Pacer
from .gestures import default_dvs_params, gesture_frames, gesture_label
from .video import DVSEmulator, DVSParams, image_sequence, sensor_size_of, to_gray

# (t_us, label or None, frame, is_log): what a frame producer yields
_Frame = tuple[int, "int | None", np.ndarray, bool]


class SimulatedCamera(EventSource):
    """An emulated event camera: frames in, one event packet per frame interval out.

    Build it with `SimulatedCamera.gestures(...)` (a person performing DVS128 Gesture motions,
    with the ground-truth `label` of the packet last yielded) or `SimulatedCamera.from_frames` /
    `SimulatedCamera.from_folder` (video or image sequences). `speed=1.0` paces packets at real
    time, `speed=None` yields them as fast as they are computed. `seed` makes every run the same.
    """

    def __init__(
        self,
        frames: Callable[[], Iterator[_Frame]],
        sensor_size: SensorSize | str,
        *,
        params: DVSParams | None = None,
        seed: int | None = None,
        speed: float | None = None,
        segments: Sequence[tuple[int, int, int]] = (),
    ) -> None:
        super().__init__(sensor_size_of(sensor_size))
        self._frames = frames
        self.params = params or DVSParams()
        self.seed = seed
        self.speed = speed
        #: ground truth: (t_start_us, t_end_us, label) per gesture, empty for video
        self.segments = list(segments)
        #: label of the frame that closed the last packet (None for unlabelled video)
        self.label: int | None = None
        self.t_us: int = 0
        self.emulator: DVSEmulator | None = None

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def gestures(
        cls,
        sequence: Sequence[int | str] | None = None,
        *,
        duration_s: float | Sequence[float] = 2.0,
        sensor_size: SensorSize | str = "dvs128",
        fps: float = 250.0,
        seed: int | None = 0,
        speed: float | None = None,
        params: DVSParams | None = None,
    ) -> SimulatedCamera:
        """One person performing `sequence` (labels or class names; default: all eleven)."""
        seq = [gesture_label(g) for g in (sequence if sequence is not None else range(11))]
        if not seq:
            raise ValueError("the gesture sequence is empty")
        durs = (
            [float(duration_s)] * len(seq)
            if isinstance(duration_s, (int, float))
            else [float(d) for d in duration_s]
        )
        if len(durs) != len(seq) or min(durs) <= 0:
            raise ValueError(f"need {len(seq)} positive durations, got {duration_s}")
        size = sensor_size_of(sensor_size)
        rng = np.random.default_rng(seed)
        emu_seed, scene_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
        dvs = params or default_dvs_params(rng)
        edges = np.round(np.cumsum([0.0, *durs]) * 1e6).astype(np.int64)
        segments = [
            (int(a), int(b), lab) for a, b, lab in zip(edges[:-1], edges[1:], seq, strict=True)
        ]

        def frames() -> Iterator[_Frame]:
            for t_us, lab, log in gesture_frames(
                seq, duration_s=durs, sensor_size=size, fps=fps, seed=scene_seed
            ):
                yield t_us, lab, log, True

        return cls(frames, size, params=dvs, seed=emu_seed, speed=speed, segments=segments)

    @classmethod
    def from_frames(
        cls,
        frames: Iterable[np.ndarray],
        timestamps_us: Iterable[int],
        *,
        sensor_size: SensorSize | str | None = None,
        params: DVSParams | None = None,
        seed: int | None = 0,
        speed: float | None = None,
    ) -> SimulatedCamera:
        """Video frames (H x W grey or H x W x 3, uint8/uint16/float in [0, 1]) with their times.

        Without `sensor_size` the first frame's size is the sensor's; otherwise frames are
        resized to it (e.g. `"dvs128"`, `"davis240"`, `"davis346"`).
        """
        frames_list = frames if isinstance(frames, (list, tuple, np.ndarray)) else list(frames)
        times = [int(t) for t in timestamps_us]
        if len(frames_list) != len(times):
            raise ValueError(f"{len(frames_list)} frames but {len(times)} timestamps")
        if len(times) == 0:
            raise ValueError("no frames")
        if sensor_size is None:
            h, w = to_gray(frames_list[0]).shape
            sensor_size = (w, h, 2)

        def gen() -> Iterator[_Frame]:
            for f, t in zip(frames_list, times, strict=True):
                yield t, None, f, False

        return cls(gen, sensor_size, params=params, seed=seed, speed=speed)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        fps: float | None = None,
        sensor_size: SensorSize | str | None = None,
        params: DVSParams | None = None,
        seed: int | None = 0,
        speed: float | None = None,
    ) -> SimulatedCamera:
        """A folder of images: `images.txt` (`seconds path` lines) if present, else name order
        at `fps`. Frames are read lazily, one at a time."""
        first = next(image_sequence(folder, fps=fps))
        if sensor_size is None:
            h, w = first[1].shape
            sensor_size = (w, h, 2)

        def gen() -> Iterator[_Frame]:
            for t, img in image_sequence(folder, fps=fps):
                yield t, None, img, False

        return cls(gen, sensor_size, params=params, seed=seed, speed=speed)

    # -- labels ------------------------------------------------------------------------------
    def label_at(self, t_us: int) -> int | None:
        """Ground-truth gesture at time `t_us` (None outside the sequence or for video).

        Segments are `(start, end]` in time, as packets are: a packet that ends at a segment's
        end holds that segment's events. Time 0 belongs to the first segment.
        """
        for a, b, lab in self.segments:
            if a <= t_us <= b if a == 0 else a < t_us <= b:
                return lab
        return None

    # -- EventSource -------------------------------------------------------------------------
    def _open(self) -> None:
        self.emulator = DVSEmulator(self.sensor_size, self.params, seed=self.seed)

    def _packets(self) -> Iterator[np.ndarray]:
        assert self.emulator is not None
        emu = self.emulator
        emu.reset()
        pacer = Pacer(self.speed)
        for t_us, label, frame, is_log in self._frames():
            events = emu.step_log(frame, t_us) if is_log else emu.step(frame, t_us)
            self.t_us, self.label = t_us, label
            pacer.wait(t_us)
            yield events
