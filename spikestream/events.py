"""The event contract: one structured dtype, a `Recording`, validation and the format error."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The one event dtype used everywhere (field names as Tonic uses them; t in microseconds).
EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

SensorSize = tuple[int, int, int]  # (W, H, P) as in Tonic


class EventFormatError(ValueError):
    """Bad input in an event file or stream: names the source, where, and what was expected."""

    def __init__(
        self,
        source: Any,
        message: str,
        *,
        offset: int | None = None,
        record: int | None = None,
        expected: str | None = None,
    ) -> None:
        self.source = str(source)
        self.offset = offset
        self.record = record
        self.expected = expected
        where = []
        if offset is not None:
            where.append(f"byte offset {offset}")
        if record is not None:
            where.append(f"record {record}")
        text = f"{self.source}"
        if where:
            text += f" at {', '.join(where)}"
        text += f": {message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


def empty_events(n: int = 0) -> np.ndarray:
    """A zeroed event array of length `n`."""
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(x: Any, y: Any, t: Any, p: Any) -> np.ndarray:
    """Pack four equal-length columns into an `EVENT_DTYPE` array (polarity mapped to 0/1)."""
    x, y, t, p = (np.asarray(a) for a in (x, y, t, p))
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"columns differ in length: x={len(x)} y={len(y)} t={n} p={len(p)}")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"] = x
    ev["y"] = y
    ev["t"] = t
    ev["p"] = p > 0
    return ev


#: The largest timestamp (µs) an event may carry.
MAX_TIME_US = (1 << 63) - 1


def checked_events(
    x: Any, y: Any, t: Any, p: Any, *, source: Any = "<events>", first: int = 0,
    t_offset: int = 0,
) -> np.ndarray:
    """Columns of any integer (or bool polarity) types as an `EVENT_DTYPE` array, with
    `t_offset` added to `t`; a value outside its field's range (x, y in 0..65535, p in
    {0, 1}, t + t_offset in 0..2^63-1) is an `EventFormatError` naming `source` and the
    record `first + i`, never wrapped or clipped."""
    cols = {"x": np.asarray(x), "y": np.asarray(y), "t": np.asarray(t), "p": np.asarray(p)}
    for name, col in cols.items():
        if len(col) and col.dtype.kind not in ("iub" if name == "p" else "iu"):
            raise EventFormatError(source, f"field {name!r} has dtype {col.dtype}",
                                   expected="integer x, y, t (µs) and integer or bool p")
    n = len(cols["t"])
    if any(len(c) != n for c in cols.values()):
        raise EventFormatError(source, "columns differ in length", record=first,
                               expected="x, y, t, p of equal length")
    t_offset = int(t_offset)
    if not 0 <= t_offset <= MAX_TIME_US:
        raise EventFormatError(source, f"time offset {t_offset} µs",
                               expected=f"0 <= offset <= {MAX_TIME_US}")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    # one compiled pass where numba is loaded anyway (as `_first_bad` decides), numpy otherwise
    if n and all(c.dtype != np.uint64 for c in cols.values()) and (
            _fill_py in _compiled or "numba" in sys.modules):
        if _compiled_fill(cols, ev, t_offset) < 0:  # all in range, written in one pass
            return ev
    limits = {"x": (0, 0xFFFF), "y": (0, 0xFFFF), "p": (0, 1), "t": (0, MAX_TIME_US - t_offset)}
    for name, (lo, hi) in limits.items():
        col = cols[name]
        if not n or col.dtype.kind == "b":
            continue
        # compare in the column's own type where the bound fits it, so nothing wraps
        info = np.iinfo(col.dtype)
        below = col < lo if info.min < lo else np.zeros(n, bool)
        above = col > hi if info.max > hi else np.zeros(n, bool)
        bad = np.flatnonzero(below | above)
        if bad.size:
            i = int(bad[0])
            raise EventFormatError(
                source, f"{name}={int(col[i])}" + (f" (+ offset {t_offset})" if name == "t"
                                                    and t_offset else ""),
                record=first + i, expected=f"{lo} <= {name} <= {hi}")
    ev["x"], ev["y"], ev["p"] = cols["x"], cols["y"], cols["p"]
    ev["t"] = cols["t"]
    if t_offset:
        ev["t"] += t_offset
    return ev


def _fill_py(x, y, t, p, ox, oy, ot, op, t_offset):  # pragma: no cover - compiled
    """`checked_events`' range checks and copy in one pass over the columns: writes the
    fields `ox, oy, ot, op` and returns -1, or stops at the first event out of range and
    returns its index (the caller's checks then name it)."""
    t_max = MAX_TIME_US - t_offset
    for i in range(t.shape[0]):
        xi, yi, ti, pi = x[i], y[i], t[i], p[i]
        if xi < 0 or xi > 0xFFFF or yi < 0 or yi > 0xFFFF or pi < 0 or pi > 1 or ti < 0 \
                or ti > t_max:
            return i
        ox[i], oy[i], ot[i], op[i] = xi, yi, ti + t_offset, pi
    return -1


def _compiled_fill(cols: dict[str, np.ndarray], ev: np.ndarray, t_offset: int) -> int:
    """`_fill_py` compiled with numba on first use (as `_first_bad`); bool polarity as u1."""
    p = cols["p"].view(np.uint8) if cols["p"].dtype == np.bool_ else cols["p"]
    return int(_jit(_fill_py)(cols["x"], cols["y"], cols["t"], p, ev["x"], ev["y"], ev["t"],
                              ev["p"], t_offset))


def as_events(events: np.ndarray) -> np.ndarray:
    """Return `events` as an `EVENT_DTYPE` array, converting field types (not names) if needed."""
    if events.dtype == EVENT_DTYPE:
        return events
    names = events.dtype.names or ()
    missing = {"x", "y", "t", "p"} - set(names)
    if missing:
        raise ValueError(f"event array lacks fields {sorted(missing)}; has {names}")
    return make_events(events["x"], events["y"], events["t"], events["p"])


#: Largest sensor width or height: the range of the u2 coordinate fields.
MAX_SENSOR_SIDE = 65535

_OK, _BACK, _OUTSIDE = 0, 1, 2


def _first_bad_py(t, x, y, p, w, h, last_t, has_last):  # pragma: no cover - compiled
    """(index, kind) of the first event that goes back in time or lies outside the sensor, in one
    pass over the (possibly strided) fields; (-1, _OK) when all are good."""
    for i in range(t.shape[0]):
        if i > 0:
            if t[i] < t[i - 1]:
                return i, 1
        elif has_last and t[0] < last_t:
            return 0, 1
        if x[i] >= w or y[i] >= h or p[i] > 1:
            return i, 2
    return -1, 0


_compiled: dict[Any, Any] = {}


def _jit(fn: Any) -> Any:
    """`fn` compiled with numba on first use (so that importing the core, as
    `spikestream --help` does, does not import numba)."""
    if fn not in _compiled:
        import numba

        _compiled[fn] = numba.njit(cache=True, nogil=True)(fn)
    return _compiled[fn]


def _first_bad_numpy(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, w: int,
                     h: int, last_t: int, has_last: bool) -> tuple[int, int]:
    """`_first_bad_py` in numpy passes: the same answer, no compiler (6 ms per million events
    against numba's 1.7 ms, but no 0.37 s to import numba)."""
    n = len(t)
    back = np.flatnonzero(t[1:] < t[:-1])
    ib = int(back[0]) + 1 if back.size else n
    if has_last and n and t[0] < last_t:
        ib = 0
    bad = np.flatnonzero((x >= w) | (y >= h) | (p > 1))
    io = int(bad[0]) if bad.size else n
    if ib == n and io == n:
        return -1, _OK
    return (ib, _BACK) if ib <= io else (io, _OUTSIDE)


#: events checked in numpy before the check switches to numba (whose import then costs less
#: than the numpy passes it saves); at once where numba is already imported
NUMBA_AFTER_EVENTS = 64_000_000
_numpy_events = [0]


def _first_bad(*args: Any) -> tuple[int, int]:
    """`_first_bad_py` compiled with numba where numba is already loaded (streaming, training)
    or the process has checked `NUMBA_AFTER_EVENTS` events; numpy before that, so that `info`,
    `convert` and `--help` never import numba."""
    if (_first_bad_py not in _compiled and "numba" not in sys.modules
            and _numpy_events[0] < NUMBA_AFTER_EVENTS):
        _numpy_events[0] += len(args[0])
        return _first_bad_numpy(*args)
    return _jit(_first_bad_py)(*args)


def validate_events(
    events: np.ndarray,
    sensor_size: SensorSize | tuple[int, int],
    *,
    source: Any = "<events>",
    first: int = 0,
    offsets: np.ndarray | None = None,
    last_t: int | None = None,
) -> None:
    """Raise `EventFormatError` unless events are time-ordered and inside the sensor.

    The one check of the event contract, for readers, sources and the binner. `first` is the
    index of `events[0]` in its stream (errors name `record first + i`), `offsets` the byte
    offset of each event in its file (errors name it), `last_t` the time of the stream's
    previous event (the first event must not go back from it).
    """
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE:
        dtype = getattr(events, "dtype", type(events).__name__)
        raise EventFormatError(source, f"packet of {dtype}", expected=str(EVENT_DTYPE))
    if len(events) == 0:
        return
    w, h = int(sensor_size[0]), int(sensor_size[1])
    t = events["t"]
    i, kind = _first_bad(t, events["x"], events["y"], events["p"], w, h,
                         0 if last_t is None else int(last_t), last_t is not None)
    if kind == _OK:
        return
    where = {"record": first + int(i),
             "offset": None if offsets is None else int(offsets[i])}
    if kind == _BACK:
        prev = int(t[i - 1]) if i > 0 else int(last_t)  # type: ignore[arg-type]
        text = f"timestamp {int(t[i])} µs goes back from {prev} µs"
        if i == 0:
            text += ", before the previous packet's last event"
        raise EventFormatError(source, text, expected="non-decreasing timestamps", **where)
    e = events[i]
    raise EventFormatError(
        source,
        f"event (x={e['x']}, y={e['y']}, p={e['p']}) outside the sensor",
        expected=f"x < {w}, y < {h}, p in {{0, 1}}",
        **where,
    )


def check_sensor_size(sensor_size: Any, *, source: Any = "<sensor>") -> SensorSize:
    """`(W, H, P)` as ints, or `EventFormatError` unless 1 <= W, H <= `MAX_SENSOR_SIDE` and P in
    (1, 2); a `(W, H)` pair gets P = 2. Every reader checks a declared size with this, so a
    header cannot claim a sensor larger than the event fields can address."""
    try:
        size = tuple(int(s) for s in sensor_size)
    except (TypeError, ValueError, OverflowError) as e:
        raise EventFormatError(source, f"sensor size {sensor_size!r}",
                               expected="(W, H[, P]) integers") from e
    if len(size) == 2:
        size = (*size, 2)
    if (len(size) != 3 or not all(1 <= s <= MAX_SENSOR_SIDE for s in size[:2])
            or size[2] not in (1, 2)):
        raise EventFormatError(source, f"sensor size {size}",
                               expected=f"1 <= W, H <= {MAX_SENSOR_SIDE} and P in (1, 2)")
    return size  # type: ignore[return-value]


@dataclass
class Recording:
    """Events with the sensor size `(W, H, P)` they were recorded on, and metadata."""

    events: np.ndarray
    sensor_size: SensorSize
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = as_events(self.events)
        self.sensor_size = tuple(int(s) for s in self.sensor_size)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.events)

    @property
    def width(self) -> int:
        return self.sensor_size[0]

    @property
    def height(self) -> int:
        return self.sensor_size[1]

    @property
    def t_start_us(self) -> int | None:
        return int(self.events["t"][0]) if len(self.events) else None

    @property
    def t_end_us(self) -> int | None:
        return int(self.events["t"][-1]) if len(self.events) else None

    def validate(self, source: Any = "<recording>") -> Recording:
        validate_events(self.events, self.sensor_size, source=source)
        return self
