"""A recording at a glance: event rate over time (ON/OFF), a spatial histogram and the time
surface of the last milliseconds, gathered packet by packet (`EventSummary`) and drawn with
matplotlib (`plot_summaries`). Work and memory follow the events present: rate bins are kept
only where events fell, so a gap in time costs nothing."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spikestream import SensorSize, as_events

from .render import check_image_size


class EventSummary:
    """Accumulates rate bins, a per-pixel count and the last `surface_us` of events."""

    def __init__(self, sensor_size: SensorSize, *, bin_us: int = 10_000,
                 surface_us: int = 50_000, name: str = "") -> None:
        if bin_us <= 0 or surface_us <= 0:
            raise ValueError(f"bin_us and surface_us must be positive ({bin_us}, {surface_us})")
        check_image_size(sensor_size)
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.bin_us = int(bin_us)
        self.surface_us = int(surface_us)
        self.name = name
        w, h = self.sensor_size[:2]
        self.counts = np.zeros((h, w), np.int64)
        self._bins: dict[int, np.ndarray] = {}  # bin index -> [OFF, ON] counts
        self._recent: deque[np.ndarray] = deque()
        self.t_first: int | None = None
        self.t_last: int | None = None
        self.events = 0

    def add(self, packet: np.ndarray) -> None:
        """Take one time-ordered packet."""
        ev = as_events(np.asarray(packet))
        if len(ev) == 0:
            return
        if self.t_first is None:
            self.t_first = int(ev["t"][0])
        self.t_last = int(ev["t"][-1])
        self.events += len(ev)
        np.add.at(self.counts, (ev["y"], ev["x"]), 1)
        b = (ev["t"] - self.t_first) // self.bin_us
        keys, inv = np.unique(b, return_inverse=True)
        per = np.zeros((len(keys), 2), np.int64)
        np.add.at(per, (inv, ev["p"]), 1)
        for k, c in zip(keys.tolist(), per, strict=True):
            prev = self._bins.get(k)
            self._bins[k] = c if prev is None else prev + c
        self._recent.append(ev[ev["t"] > self.t_last - self.surface_us])
        while self._recent and self._recent[0]["t"][-1] <= self.t_last - self.surface_us:
            self._recent.popleft()

    def rate(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin start times (s from the first event) and event rates `[n, 2]` (OFF, ON; ev/s)
        of every bin that holds events."""
        keys = np.array(sorted(self._bins), np.int64)
        per = np.array([self._bins[k] for k in keys.tolist()], np.float64).reshape(-1, 2)
        return keys * self.bin_us / 1e6, per / (self.bin_us / 1e6)

    def time_surface(self) -> np.ndarray:
        """`[H, W]` in [-1, 1]: for each pixel whose last event is within `surface_us` of the
        end, `(1 - age / surface_us)` signed by that event's polarity (+ ON, - OFF); else 0."""
        w, h = self.sensor_size[:2]
        out = np.zeros((h, w))
        if self.t_last is None:
            return out
        ev = np.concatenate(list(self._recent)) if self._recent else as_events(np.zeros(0))
        ev = ev[ev["t"] > self.t_last - self.surface_us]
        flat = ev["y"].astype(np.int64) * w + ev["x"]
        _, first_of_reversed = np.unique(flat[::-1], return_index=True)
        last = ev[len(ev) - 1 - first_of_reversed]  # each pixel's latest event
        age = (self.t_last - last["t"]) / self.surface_us
        out[last["y"], last["x"]] = (1 - age) * np.where(last["p"] == 1, 1.0, -1.0)
        return out


def plot_summaries(summaries: Sequence[EventSummary], path: str | Path) -> None:
    """One row per summary: rate over time (ON, OFF), spatial histogram, time surface."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summaries)
    fig, axes = plt.subplots(n, 3, figsize=(14, 3.6 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1, 1]})
    for row, s in zip(axes, summaries, strict=True):
        t, r = s.rate()
        row[0].step(t, r[:, 1], where="post", color="tab:blue", label="ON")
        row[0].step(t, r[:, 0], where="post", color="tab:red", label="OFF")
        row[0].set_xlabel("time since first event (s)")
        row[0].set_ylabel(f"events/s ({s.bin_us / 1000:g} ms bins)")
        row[0].set_title(f"{s.name}: {s.events:,} events")
        row[0].legend(loc="upper right")
        im = row[1].imshow(s.counts, cmap="viridis", interpolation="nearest")
        row[1].set_title("events per pixel")
        fig.colorbar(im, ax=row[1], fraction=0.046)
        im = row[2].imshow(s.time_surface(), cmap="RdBu", vmin=-1, vmax=1,
                           interpolation="nearest")
        row[2].set_title(f"last {s.surface_us / 1000:g} ms: ON blue, OFF red")
        fig.colorbar(im, ax=row[2], fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=90)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
