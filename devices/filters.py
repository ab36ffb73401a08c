"""Noise filters shared by the offline and live paths: background activity, refractory period
and hot pixels.

Each filter is a class that takes time-ordered `EVENT_DTYPE` packets one after another
(`f(packet) -> kept events`) and carries its per-pixel state across packets, so any split of a
stream into packets keeps exactly the events that one call on the whole stream keeps. The pure
functions (`background_activity`, `refractory`, `hot_pixel`) are one call on a fresh filter.

Definitions (t in µs; "last" is a pixel's latest event of either polarity, kept or dropped):

- background activity (tonic `Denoise(filter_time)`, dv-processing
  `BackgroundActivityNoiseFilter(resolution, backgroundActivityDuration)`): keep an event if a
  neighbouring pixel (not its own) has `t - last < filter_time`; neighbours are the 4 of
  tonic or the 8 of dv-processing (`neighbours=`). A pixel that never fired is no support.
  (Both libraries treat a never-fired pixel as fired at t = 0, so they also keep events at
  t < filter_time with silent neighbours; from t >= filter_time on, all three agree.)
- refractory period (tonic `RefractoryPeriod(delta)`): keep an event if its pixel never fired
  or `t - last > delta`. (tonic starts every pixel at `last = -delta`, dropping events at
  t <= 0; from t > 0 on, the two agree.)
- hot pixels (by rate, as dv's hot-pixel learning): for the first `learn_us` of the stream
  count events per pixel; pixels above `max_rate_hz` in that time are hot and their later
  events are dropped. Events during learning pass (a live filter cannot take them back).

The per-event loops are compiled with numba; `benchmarks/filters.py` measures them beside
tonic's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numba
import numpy as np

from spikestream import SensorSize, as_events, validate_events

NEVER = np.iinfo(np.int64).min // 4  # "no event yet"; far below any t - window


@numba.njit(cache=True, nogil=True)
def _background_activity(x, y, t, last, window, eight, keep):  # pragma: no cover - compiled
    for i in range(len(t)):
        xi = np.int64(x[i]) + 1  # `last` has a border of NEVER pixels
        yi = np.int64(y[i]) + 1
        lim = t[i] - window  # a neighbour supports if last > t - window
        ok = (last[yi, xi - 1] > lim or last[yi, xi + 1] > lim
              or last[yi - 1, xi] > lim or last[yi + 1, xi] > lim)
        if eight and not ok:
            ok = (last[yi - 1, xi - 1] > lim or last[yi - 1, xi + 1] > lim
                  or last[yi + 1, xi - 1] > lim or last[yi + 1, xi + 1] > lim)
        keep[i] = ok
        last[yi, xi] = t[i]


@numba.njit(cache=True, nogil=True)
def _refractory(x, y, t, last, delta, keep):  # pragma: no cover - compiled
    for i in range(len(t)):
        prev = last[y[i], x[i]]
        keep[i] = prev == NEVER or t[i] - prev > delta
        last[y[i], x[i]] = t[i]


def _checked(packet: np.ndarray, sensor_size: Sequence[int]) -> np.ndarray:
    """The packet as `EVENT_DTYPE`, through the one event check (time order, on the sensor)."""
    ev = as_events(np.asarray(packet))
    validate_events(ev, sensor_size, source="filter input")
    return ev


class EventFilter:
    """Base: `filter(packet)` (also `f(packet)`) keeps events; state spans packets."""

    def __init__(self, sensor_size: SensorSize) -> None:
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.seen = 0
        self.kept = 0

    def _keep(self, ev: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def filter(self, packet: np.ndarray) -> np.ndarray:
        ev = _checked(packet, self.sensor_size)
        if len(ev) == 0:
            return ev
        out = ev[self._keep(ev)]
        self.seen += len(ev)
        self.kept += len(out)
        return out

    __call__ = filter

    def reset(self) -> None:
        """Forget all state, as for a new stream."""
        self.__init__(self.sensor_size, **self._params())  # type: ignore[misc]

    def _params(self) -> dict:
        return {}


class BackgroundActivityFilter(EventFilter):
    """Keep events supported by a neighbour within `filter_time` µs (4 or 8 neighbours)."""

    def __init__(self, sensor_size: SensorSize, filter_time: int = 2_000,
                 neighbours: int = 8) -> None:
        super().__init__(sensor_size)
        if filter_time <= 0 or neighbours not in (4, 8):
            raise ValueError(f"need filter_time > 0 and neighbours 4 or 8; got {filter_time}, "
                             f"{neighbours}")
        self.filter_time = int(filter_time)
        self.neighbours = int(neighbours)
        w, h = self.sensor_size[:2]
        self._last = np.full((h + 2, w + 2), NEVER, np.int64)

    def _params(self) -> dict:
        return {"filter_time": self.filter_time, "neighbours": self.neighbours}

    def _keep(self, ev: np.ndarray) -> np.ndarray:
        keep = np.empty(len(ev), np.bool_)
        _background_activity(ev["x"], ev["y"], ev["t"], self._last, self.filter_time,
                             self.neighbours == 8, keep)
        return keep


class RefractoryFilter(EventFilter):
    """Drop events within `delta` µs of their pixel's previous event."""

    def __init__(self, sensor_size: SensorSize, delta: int = 1_000) -> None:
        super().__init__(sensor_size)
        if delta < 0:
            raise ValueError(f"refractory period must be >= 0, got {delta}")
        self.delta = int(delta)
        w, h = self.sensor_size[:2]
        self._last = np.full((h, w), NEVER, np.int64)

    def _params(self) -> dict:
        return {"delta": self.delta}

    def _keep(self, ev: np.ndarray) -> np.ndarray:
        keep = np.empty(len(ev), np.bool_)
        _refractory(ev["x"], ev["y"], ev["t"], self._last, self.delta, keep)
        return keep


class HotPixelFilter(EventFilter):
    """Learn hot pixels (rate above `max_rate_hz`) over the first `learn_us`, then drop them."""

    def __init__(self, sensor_size: SensorSize, max_rate_hz: float = 1_000.0,
                 learn_us: int = 1_000_000) -> None:
        super().__init__(sensor_size)
        if max_rate_hz <= 0 or learn_us <= 0:
            raise ValueError(f"need max_rate_hz > 0 and learn_us > 0; got {max_rate_hz}, "
                             f"{learn_us}")
        self.max_rate_hz = float(max_rate_hz)
        self.learn_us = int(learn_us)
        w, h = self.sensor_size[:2]
        self._counts = np.zeros(h * w, np.int64)
        self._t_end: int | None = None  # learning ends here (first event + learn_us)
        self.hot: np.ndarray | None = None  # [H, W] bool once learnt

    def _params(self) -> dict:
        return {"max_rate_hz": self.max_rate_hz, "learn_us": self.learn_us}

    def _keep(self, ev: np.ndarray) -> np.ndarray:
        w, h = self.sensor_size[:2]
        if self._t_end is None:
            self._t_end = int(ev["t"][0]) + self.learn_us
        keep = np.ones(len(ev), np.bool_)
        start = 0  # events from here on are judged by the learnt mask
        if self.hot is None:
            start = int(np.searchsorted(ev["t"], self._t_end, side="left"))
            learning = ev[:start]
            np.add.at(self._counts, learning["y"].astype(np.int64) * w + learning["x"], 1)
            if start == len(ev):
                return keep
            limit = self.max_rate_hz * self.learn_us / 1e6
            self.hot = (self._counts > limit).reshape(h, w)
        rest = ev[start:]
        keep[start:] = ~self.hot[rest["y"], rest["x"]]
        return keep


class FilterChain(EventFilter):
    """Several filters one after another (each sees only what the previous kept)."""

    def __init__(self, filters: Sequence[EventFilter]) -> None:
        if not filters:
            raise ValueError("a filter chain needs at least one filter")
        super().__init__(filters[0].sensor_size)
        self.filters = list(filters)

    def filter(self, packet: np.ndarray) -> np.ndarray:
        ev = _checked(packet, self.sensor_size)
        self.seen += len(ev)
        for f in self.filters:
            ev = f.filter(ev)
        self.kept += len(ev)
        return ev

    __call__ = filter

    def reset(self) -> None:
        for f in self.filters:
            f.reset()
        self.seen = self.kept = 0


def background_activity(events: np.ndarray, sensor_size: SensorSize, filter_time: int = 2_000,
                        neighbours: int = 8) -> np.ndarray:
    """The events a `BackgroundActivityFilter` keeps from the whole stream."""
    return BackgroundActivityFilter(sensor_size, filter_time, neighbours).filter(events)


def refractory(events: np.ndarray, sensor_size: SensorSize, delta: int = 1_000) -> np.ndarray:
    """The events a `RefractoryFilter` keeps from the whole stream."""
    return RefractoryFilter(sensor_size, delta).filter(events)


def hot_pixel(events: np.ndarray, sensor_size: SensorSize, max_rate_hz: float = 1_000.0,
              learn_us: int = 1_000_000) -> np.ndarray:
    """The events a `HotPixelFilter` keeps from the whole stream."""
    return HotPixelFilter(sensor_size, max_rate_hz, learn_us).filter(events)


def filter_from_spec(spec: str, sensor_size: SensorSize) -> EventFilter:
    """A filter (or chain) from text: comma-separated `ba:FILTER_TIME_US[:4|8]`,
    `refractory:DELTA_US`, `hot:MAX_RATE_HZ[:LEARN_US]`, applied in that order as written."""
    filters: list[EventFilter] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, *vals = part.split(":")
        try:
            nums = [float(v) for v in vals]
        except ValueError:
            raise ValueError(f"filter {part!r}: parameters must be numbers") from None
        if name in ("ba", "background") and 1 <= len(nums) <= 2:
            filters.append(BackgroundActivityFilter(sensor_size, int(nums[0]),
                                                    int(nums[1]) if len(nums) > 1 else 8))
        elif name in ("refractory", "rp") and len(nums) == 1:
            filters.append(RefractoryFilter(sensor_size, int(nums[0])))
        elif name in ("hot", "hotpixel") and 1 <= len(nums) <= 2:
            filters.append(HotPixelFilter(sensor_size, nums[0], *(int(n) for n in nums[1:])))
        else:
            raise ValueError(f"unknown filter {part!r}; use ba:FILTER_TIME_US[:4|8], "
                             "refractory:DELTA_US or hot:MAX_RATE_HZ[:LEARN_US]")
    if not filters:
        raise ValueError("empty filter spec")
    return filters[0] if len(filters) == 1 else FilterChain(filters)


class FilteredSource:
    """A source whose packets pass through `keep` (a stateful filter, so the stream is
    filtered exactly as the whole recording would be); everything else (sensor size,
    counters, pacing, labels) is the wrapped source's."""

    def __init__(self, source: Any, keep: EventFilter) -> None:
        self._source = source
        self._keep = keep

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self._keep(packet) for packet in self._source)

    def __enter__(self) -> FilteredSource:
        self._source.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._source.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)
