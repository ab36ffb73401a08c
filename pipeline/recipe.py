"""A model's input recipe: how events become the frames a checkpoint was trained on.

Training saves an `InputRecipe` in every checkpoint's JSON (`extra.recipe`), and every command
that feeds a checkpoint (`eval`, `stream`, `demo`, `model-info`) bins by it. It holds the
sensor size the training data came from, the frame size, the binning mode and its value, the
polarity handling and the event filters, plus the *live equivalent* of per-sample binnings:

- `time_window` (µs): fixed bins; live streams use the same window.
- `n_time_bins` (n equal-duration bins of each sample): a whole recording of known span is
  binned exactly as in training (`sample_binning`); an endless stream has no span, so it uses
  a fixed window equal to the training set's mean bin length (`live_time_window_us`).
- `n_event_bins` (n equal-count bins of each sample): likewise, a whole recording exactly;
  live, a fixed count equal to the training set's mean events per bin (`live_event_count`).
- `event_count`: fixed-count bins; live streams use the same count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("time_window", "n_time_bins", "event_count", "n_event_bins")
FILTERS = ("crop_to_sensor",)  # drop events outside the recipe's sensor (N-MNIST's loader does)

# A recording is one sample (binned per sample, as training did) when its span is at most this
# many times the training samples' mean span; longer ones are binned as a live stream.
SAMPLE_SPAN_FACTOR = 2.0


@dataclass(frozen=True)
class StreamBinning:
    """How one stream is binned: a fixed `time_window` (µs) or `event_count`, the bin grid's
    start `t0` (None: the first event), at most `max_steps` bins, and what it stands for."""

    time_window: int | None
    event_count: int | None
    t0: int | None
    max_steps: int | None
    per_sample: bool  # True: exactly training's binning of this recording as one sample
    description: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InputRecipe:
    """Sensor `(W, H, P)`, frame `(H, W)`, binning `mode` and `value`, polarity and filters."""

    sensor_size: tuple[int, int, int]
    frame_size: tuple[int, int]
    mode: str
    value: int
    binary: bool = False
    merge_polarity: bool = False
    start_time: int | None = None  # fixed clip bounds (time_window on fixed-length clips)
    end_time: int | None = None
    filters: tuple[str, ...] = ()
    live_time_window_us: int | None = None
    live_event_count: int | None = None
    sample_span_us: int | None = None  # mean span (last - first event) of a training sample

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"binning mode {self.mode!r} (expected one of {', '.join(MODES)})")
        if int(self.value) != self.value or self.value <= 0:
            raise ValueError(f"binning value must be a positive integer; got {self.value}")
        if len(self.sensor_size) != 3 or len(self.frame_size) != 2:
            raise ValueError(f"sensor_size (W, H, P) and frame_size (H, W); got "
                             f"{self.sensor_size}, {self.frame_size}")
        unknown = set(self.filters) - set(FILTERS)
        if unknown:
            raise ValueError(f"unknown filters {sorted(unknown)} (known: {', '.join(FILTERS)})")
        for name in ("live_time_window_us", "live_event_count"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive; got {v}")

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sensor_size"], d["frame_size"] = list(self.sensor_size), list(self.frame_size)
        d["filters"] = list(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputRecipe:
        if not isinstance(d, dict):
            raise ValueError(f"input recipe must be an object; got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise ValueError(f"input recipe: unknown fields {sorted(extra)}")
        d = dict(d)
        d["sensor_size"] = tuple(int(v) for v in d["sensor_size"])
        d["frame_size"] = tuple(int(v) for v in d["frame_size"])
        d["filters"] = tuple(d.get("filters") or ())
        return cls(**d)

    @classmethod
    def from_binning(cls, binning: dict[str, Any], sensor_size: Any, frame_size: Any, *,
                     filters: tuple[str, ...] = (), start_time: int | None = None,
                     end_time: int | None = None) -> InputRecipe:
        """A recipe from a `{mode: value, "binary": ...}` spec (the command line's form)."""
        modes = [m for m in MODES if binning.get(m) is not None]
        if len(modes) != 1:
            raise ValueError(f"binning {binning}: give exactly one of {', '.join(MODES)}")
        return cls(tuple(int(v) for v in sensor_size), tuple(int(v) for v in frame_size),
                   modes[0], int(binning[modes[0]]), binary=bool(binning.get("binary", False)),
                   merge_polarity=bool(binning.get("merge_polarity", False)),
                   start_time=start_time, end_time=end_time, filters=tuple(filters))

    # -- offline: a dataset sample ---------------------------------------------------------

    def frame_params(self) -> dict[str, Any]:
        """`to_frames` keyword arguments (what training binned each sample with)."""
        params: dict[str, Any] = {self.mode: int(self.value)}
        if self.binary:
            params["binary"] = True
        if self.merge_polarity:
            params["merge_polarity"] = True
        if self.start_time is not None:
            params["start_time"] = int(self.start_time)
        if self.end_time is not None:
            params["end_time"] = int(self.end_time)
        if tuple(self.frame_size) != (self.sensor_size[1], self.sensor_size[0]):
            params["target_size"] = tuple(int(v) for v in self.frame_size)
        return params

    def filter_events(self, events: np.ndarray) -> np.ndarray:
        """Apply the recipe's event filters (a packet or a whole recording)."""
        if "crop_to_sensor" in self.filters and len(events):
            w, h = self.sensor_size[0], self.sensor_size[1]
            keep = (events["x"] < w) & (events["y"] < h)
            if not keep.all():
                return events[keep]
        return events

    # -- streams ---------------------------------------------------------------------------

    @property
    def per_sample(self) -> bool:
        """Whether the binning depends on the whole sample (n equal bins)."""
        return self.mode in ("n_time_bins", "n_event_bins")

    def live_binning(self) -> StreamBinning:
        """The binning of an endless stream (see the module doc for per-sample modes)."""
        if self.mode == "time_window":
            return StreamBinning(int(self.value), None, None, None, False,
                                 f"time window {self.value / 1000:g} ms (as trained)")
        if self.mode == "event_count":
            return StreamBinning(None, int(self.value), None, None, False,
                                 f"{self.value} events per bin (as trained)")
        if self.mode == "n_time_bins":
            if self.live_time_window_us is None:
                raise ValueError("the recipe (n_time_bins) has no live_time_window_us: give "
                                 "the bin length (--bin-ms)")
            w = int(self.live_time_window_us)
            return StreamBinning(w, None, None, None, False,
                                 f"time window {w / 1000:g} ms: the training samples' mean bin "
                                 f"length ({self.value} equal bins per sample)")
        if self.live_event_count is None:
            raise ValueError("the recipe (n_event_bins) has no live_event_count: give the bin "
                             "length (--bin-ms)")
        c = int(self.live_event_count)
        return StreamBinning(None, c, None, None, False,
                             f"{c} events per bin: the training samples' mean per bin "
                             f"({self.value} equal-count bins per sample)")

    def sample_binning(self, t_first: int, t_last: int, n_events: int) -> StreamBinning:
        """Binning that gives exactly `to_frames(recording, **frame_params())` for a whole
        recording (first and last timestamps, event count) streamed one bin at a time
        (per-sample modes)."""
        span = int(t_last) - int(t_first)
        if self.mode == "n_time_bins":
            w = span // int(self.value)
            if w <= 0:
                raise ValueError(f"a recording of {span} µs cannot be cut into {self.value} "
                                 "time bins")
            return StreamBinning(w, None, int(t_first), int(self.value), True,
                                 f"{self.value} equal bins of this recording "
                                 f"({w / 1000:g} ms each, as trained)")
        if self.mode == "n_event_bins":
            c = int(n_events) // int(self.value)
            if c <= 0:
                raise ValueError(f"a recording of {n_events} events cannot be cut into "
                                 f"{self.value} event bins")
            return StreamBinning(None, c, None, int(self.value), True,
                                 f"{self.value} equal-count bins of this recording "
                                 f"({c} events each, as trained)")
        raise ValueError(f"{self.mode} bins do not depend on the sample: use live_binning")

    def recording_binning(self, t_first: int, t_last: int, n_events: int) -> StreamBinning:
        """A whole recording: for per-sample modes, binned as one training sample when it is
        sample-sized (span at most `SAMPLE_SPAN_FACTOR` times the training samples' mean span,
        or no mean known); otherwise, and for fixed windows or counts, as a live stream."""
        if not self.per_sample:
            return self.live_binning()
        span = int(t_last) - int(t_first)
        if self.sample_span_us is None or span <= SAMPLE_SPAN_FACTOR * self.sample_span_us:
            return self.sample_binning(t_first, t_last, n_events)
        return self.live_binning()

    def binning_for(self, events: np.ndarray) -> StreamBinning:
        """`recording_binning` of a whole recording's events (after the recipe's filters)."""
        events = self.filter_events(events)
        if len(events) == 0:
            return self.live_binning()
        return self.recording_binning(int(events["t"][0]), int(events["t"][-1]), len(events))

    def describe(self) -> str:
        """The training binning in words, e.g. `8 equal time bins per sample`."""
        return {"time_window": f"{self.value / 1000:g} ms time windows",
                "event_count": f"{self.value} events per bin",
                "n_time_bins": f"{self.value} equal time bins per sample",
                "n_event_bins": f"{self.value} equal-count bins per sample"}[self.mode]

    def with_time_window(self, window_us: int) -> InputRecipe:
        """The recipe with a fixed time window instead (an explicit `--bin-ms`)."""
        return replace(self, mode="time_window", value=int(window_us), start_time=None,
                       end_time=None)

    def sensor_mismatch(self, sensor_size: Any) -> str | None:
        """A warning when a source's sensor differs from the training data's, else None."""
        got = tuple(int(v) for v in sensor_size)
        if got[:2] != tuple(self.sensor_size[:2]):
            return (f"the source's sensor is {got[0]}x{got[1]} but the checkpoint was trained on "
                    f"{self.sensor_size[0]}x{self.sensor_size[1]} recordings: frames are "
                    f"resized to {self.frame_size[1]}x{self.frame_size[0]}, which is not what "
                    "it was trained on")
        return None


def measure_live_equivalent(recipe: InputRecipe, events_ds: Any,
                            max_samples: int = 1000) -> InputRecipe:
    """The recipe with its live equivalent and mean sample span measured on `events_ds` (the
    training set; at most `max_samples` samples, evenly spaced)."""
    if not recipe.per_sample:
        return recipe
    n = len(events_ds)
    if n == 0:
        return recipe
    idx = np.unique(np.linspace(0, n - 1, min(n, max_samples)).astype(int))
    spans, windows, counts = [], [], []
    for i in idx:
        ev = recipe.filter_events(events_ds.load(int(i)))
        if len(ev) == 0:
            continue
        span = int(ev["t"][-1]) - int(ev["t"][0])
        spans.append(span)
        windows.append(span // recipe.value)
        counts.append(len(ev) // recipe.value)
    if not spans:
        return recipe
    return replace(recipe, sample_span_us=int(round(np.mean(spans))),
                   live_time_window_us=max(1, int(round(np.mean(windows)))),
                   live_event_count=max(1, int(round(np.mean(counts)))))


def default_cache() -> Path:
    """`$SPIKESTREAM_CACHE/frames`, else `~/.cache/spikestream/frames` (never the data folder)."""
    base = os.environ.get("SPIKESTREAM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "spikestream") / "frames"


def recipe_for_dataset(events_ds: Any, binning: dict[str, Any], frame_size: Any) -> InputRecipe:
    """The recipe of training on `events_ds` with a binning spec and a frame size: fixed-length
    clips (`duration_s`) binned by time window run from t = 0 to the clip's end; the live
    equivalent of per-sample binnings is measured on the dataset."""
    start = end = None
    if binning.get("time_window") is not None and hasattr(events_ds, "duration_s"):
        start, end = 0, int(round(events_ds.duration_s * 1e6))
    filters = tuple(getattr(events_ds, "event_filters", ()))
    recipe = InputRecipe.from_binning(binning, events_ds.sensor_size, frame_size,
                                      filters=filters, start_time=start, end_time=end)
    return measure_live_equivalent(recipe, events_ds)


def frames_dataset(events_ds: Any, recipe: InputRecipe, cache: Path | None,
                   augment: Any = None, in_memory: bool = True) -> Any:
    """`(frames, label)` samples of an event dataset binned by `recipe` (cached). The dataset's
    loader applies the recipe's filters itself (they are recorded for streams)."""
    from spikestream.datasets.cache import FrameDataset
    from spikestream.pipeline.binning import to_frames

    return FrameDataset(events_ds, partial(to_frames, dtype=np.float32), recipe.frame_params(),
                        cache_dir=cache, in_memory=in_memory, augment=augment)
