"""Synthetic DVS-Gesture-like clips: labelled events from the simulated camera's gesture scenes.

Sample `i` of a split shows gesture `i % 11` (balanced classes) performed by a randomly drawn
person (speed, phase, position, scale, brightness, clutter, pixel mismatch and noise all come
from the clip's seed), rendered by `spikestream.devices.gestures.gesture_clip`, the same scene
renderer and DVS emulator that `SimulatedCamera.gestures` streams. Clip seeds derive from
`(seed, split, i)` through numpy's `SeedSequence`, so train and test never share a clip and a
seed always gives the same data. `sample_key` includes a digest of the generator's source, so
cached frames are recomputed when the renderer changes.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from spikestream import SensorSize
from spikestream.datasets.registry import register_dataset, split_parts
from spikestream.datasets.samples import LabelledEvents
from spikestream.devices import gestures as _gestures
from spikestream.devices import video as _video
from spikestream.devices.gestures import GESTURE_CLASSES, gesture_clip
from spikestream.devices.video import sensor_size_of

_SPLITS = {"train": 0, "test": 1, "val": 2}


def generator_digest() -> str:
    """Short digest of the scene renderer's and emulator's source code."""
    h = hashlib.sha256()
    for mod in (_gestures, _video):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()[:16]


class SyntheticGestures(LabelledEvents):
    """`(events, label)` clips of the eleven DVS128 Gesture motions from the simulated camera.

    Parameters: `samples_per_class`, `split` ("train", "val" or "test"), `duration_s` of each
    clip, `sensor_size` (default the DVS128's 128x128), `fps` of the rendered scene (the
    simulated camera's default), `seed`, `num_classes` (11, or 10 without "other"),
    `transform` (applied to the events).
    """

    def __init__(
        self,
        samples_per_class: int = 40,
        split: str = "train",
        *,
        duration_s: float = 1.5,
        sensor_size: SensorSize | str = (128, 128, 2),
        fps: float = 250.0,
        seed: int = 0,
        num_classes: int = 11,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split {split!r} (expected one of {sorted(_SPLITS)})")
        if samples_per_class < 1 or duration_s <= 0 or num_classes not in (10, 11):
            raise ValueError(f"samples_per_class={samples_per_class}, duration_s={duration_s}, "
                             f"num_classes={num_classes}: need >= 1, > 0 and 10 or 11")
        self.split = split
        self.duration_s = float(duration_s)
        self.sensor_size: SensorSize = sensor_size_of(sensor_size)
        self.fps = float(fps)
        self.seed = int(seed)
        self.num_classes = num_classes
        self.classes = list(GESTURE_CLASSES[:num_classes])
        self.transform = transform
        n = samples_per_class * num_classes
        self.targets = [i % num_classes for i in range(n)]
        self.clip_seeds = [
            int(np.random.SeedSequence([self.seed, _SPLITS[split], i]).generate_state(1)[0])
            for i in range(n)
        ]
        self._digest = generator_digest()
        self.event_params = {"duration_s": self.duration_s, "fps": self.fps,
                             "generator": self._digest}

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> np.ndarray:
        """The events of clip `index` (t from 0 µs), untransformed."""
        return gesture_clip(self.targets[index], self.duration_s, self.sensor_size,
                            seed=self.clip_seeds[index], fps=self.fps)

    def sample_key(self, index: int) -> str:
        return (f"synthetic|{self.targets[index]}|{self.clip_seeds[index]}|{self.duration_s}|"
                f"{self.fps}|{self.sensor_size}|{self._digest}")

    def __repr__(self) -> str:
        return (f"SyntheticGestures({self.split}, samples={len(self)}, "
                f"duration_s={self.duration_s}, seed={self.seed})")


@register_dataset("synthetic", frame_size=(32, 32), binning={"time_window": 100_000},
                  needs_root=False,
                  options=("samples_per_class", "clip_seconds", "split_seed", "num_classes"))
def _create(root: Any, part: str, *, download: bool = False, samples_per_class: int = 40,
            clip_seconds: float = 1.5, split_seed: int = 0, num_classes: int = 11) -> Any:
    """Training clips: `samples_per_class` per class; held-out: a quarter of it (at least 10)."""

    def make(train: bool) -> SyntheticGestures:
        n = samples_per_class if train else max(10, samples_per_class // 4)
        return SyntheticGestures(n, "train" if train else "test", duration_s=clip_seconds,
                                 seed=split_seed, num_classes=num_classes)

    return split_parts(make, part)
