"""A model's running decision over a recording: step it over the binned frames and, after each
step, take the argmax of the mean of the logits so far (as `evaluation` scores), with the
softmax of that mean as the confidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spikestream import SensorSize, as_events
from spikestream.pipeline.binning import slice_indices, to_frames

_SLICE_KEYS = ("time_window", "event_count", "n_time_bins", "n_event_bins", "overlap",
               "include_incomplete", "start_time", "end_time")


@dataclass
class RunningDecisions:
    """Per step: the time its bin ends (µs, the last event it holds), the decided class and
    its confidence."""

    end_us: np.ndarray
    label: np.ndarray
    confidence: np.ndarray

    def at(self, t_us: np.ndarray) -> np.ndarray:
        """Index of the latest step decided by each time in `t_us` (-1: none yet)."""
        return np.searchsorted(self.end_us, t_us, side="right") - 1


@torch.no_grad()
def running_decisions(model: Any, events: np.ndarray, sensor_size: SensorSize,
                      frame_params: dict[str, Any]) -> RunningDecisions:
    """Bin `events` with `to_frames(**frame_params)` and step `model` over the frames."""
    events = as_events(np.asarray(events))
    if len(events) == 0:
        empty = np.zeros(0, np.int64)
        return RunningDecisions(empty, empty, np.zeros(0))
    frames = to_frames(events, sensor_size, dtype=np.float32, **frame_params)
    _, ends = slice_indices(events, **{k: v for k, v in frame_params.items() if k in _SLICE_KEYS})
    end_us = events["t"][np.maximum(ends - 1, 0)].astype(np.int64)
    state = model.init_state(1)
    total = None
    labels, conf = [], []
    for i, frame in enumerate(frames):
        logits, state = model.step(torch.from_numpy(frame[None]), state)
        total = logits[0] if total is None else total + logits[0]
        p = torch.softmax(total / (i + 1), dim=0)
        labels.append(int(p.argmax()))
        conf.append(float(p.max()))
    return RunningDecisions(end_us, np.array(labels, np.int64), np.array(conf))
