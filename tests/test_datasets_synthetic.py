"""SyntheticGestures: balanced labelled clips from the simulated camera, seeded and repeatable."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from spikestream import EVENT_DTYPE, validate_events
from spikestream.datasets import FrameDataset, SyntheticGestures
from spikestream.devices.gestures import GESTURE_CLASSES, gesture_clip
from spikestream.pipeline.binning import to_frames


def test_layout_seeds_and_events() -> None:
    train = SyntheticGestures(2, "train", duration_s=0.12, seed=5)
    test = SyntheticGestures(2, "test", duration_s=0.12, seed=5)
    assert len(train) == 22 and train.targets == [i % 11 for i in range(22)]
    assert train.classes == list(GESTURE_CLASSES) and train.sensor_size == (128, 128, 2)
    assert not set(train.clip_seeds) & set(test.clip_seeds)
    assert SyntheticGestures(2, "train", duration_s=0.12, seed=5).clip_seeds == train.clip_seeds
    assert SyntheticGestures(2, "train", duration_s=0.12, seed=6).clip_seeds != train.clip_seeds
    ev, label = train[3]
    assert label == 3 and ev.dtype == EVENT_DTYPE and len(ev) > 100
    validate_events(ev, train.sensor_size)
    assert ev["t"].min() >= 0 and ev["t"].max() <= 120_000
    # the simulated camera's own clip function with the same seed gives the same events
    np.testing.assert_array_equal(ev, gesture_clip(3, 0.12, (128, 128, 2),
                                                   seed=train.clip_seeds[3]))
    assert len({train.sample_key(i) for i in range(len(train))}) == len(train)
    assert SyntheticGestures(1, num_classes=10).targets == list(range(10))
    with pytest.raises(ValueError, match="split"):
        SyntheticGestures(1, "validation")


def test_fixed_length_frames(tmp_path) -> None:
    ds = SyntheticGestures(1, "test", duration_s=0.1, seed=1)
    fd = FrameDataset(ds, partial(to_frames, dtype=np.float32),
                      {"time_window": 20_000, "start_time": 0, "end_time": 100_000,
                       "target_size": (32, 32)}, cache_dir=tmp_path)
    x, y = fd[7]
    assert tuple(x.shape) == (5, 2, 32, 32) and y == 7
    ev = ds.load(7)
    assert x.sum() == np.count_nonzero(ev["t"] < 100_000)  # every event lands in a bin
