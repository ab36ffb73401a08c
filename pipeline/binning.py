"""One binner for offline and live use: events -> spike frames `[T, P, H, W]`.

`to_frames` gives the frames of `tonic.transforms.ToFrame` for the same slicing parameters
(time window, event count, number of time or event bins, overlap, incomplete last slice,
start/end time), plus binary spikes, polarity merging and spatial downsampling.
`StreamBinner` takes packets as they arrive and emits every completed bin; for any split of
a stream into packets it emits the frames `to_frames` gives for the whole stream.

The slicing follows Tonic's formulas (index ranges by binary search, as `searchsorted`); the
counting is one compiled loop over the events of each slice (numba) instead of Tonic's per-slice
`np.add.at`, which is where Tonic spends its time. The loop also checks coordinates and time
order on the way, reads the strided fields of the event array in place, and needs no
per-event temporaries (an `np.bincount` over flat indices needs several int64 arrays of the
event count and an int64 copy of the whole output, and ran at less than half the speed).

Spatial downsampling to a target frame size `(H_out, W_out)` maps each coordinate with
`x_out = floor(x * W_out / W)` and `y_out = floor(y * H_out / H)` and sums the events that
land on the same output pixel. For an integer ratio `W / W_out = f` this is sum pooling over
`f x f` blocks; for a non-integer ratio the output pixels cover 1 or 2 (more generally
`floor` or `ceil` of the ratio) input columns/rows, so their areas differ slightly.

Counts saturate at the largest value of the output dtype (default int16, as Tonic's frames)
instead of wrapping around as Tonic's would.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numba
import numpy as np

from spikestream.events import EVENT_DTYPE, as_events, validate_events

__all__ = ["StreamBinner", "frame_shape", "slice_indices", "to_frames"]


_OK, _OUTSIDE, _UNSORTED = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _accumulate(x, y, p, t, starts, ends, xlut, ylut, plut, out, binary, maxval, check_sorted,
                fresh):
    """Count events `starts[k]:ends[k]` into the flat frame `out[k]` (zeroed first if `fresh`).

    Zeroing each frame just before its events land, rather than taking a zeroed output,
    brings the frame into the cache in one sequential pass: the events' scattered increments
    then hit the cache instead of each missing it once per cache line (at 346x260 a frame is
    352 KiB; counting into a zeroed but cold output ran at a third of the speed).

    An event goes to `out[k, plut[p] + ylut[y] + xlut[x]]`; the tables cover every value of
    the field types and map coordinates outside the sensor past the frame's end. Counts
    saturate at `maxval` (checked only in slices with more than `maxval` events). Returns
    `(_OK, -1)`, or the first problem: `(_OUTSIDE, i)` for an event outside the sensor,
    `(_UNSORTED, i)` for a visited event whose timestamp is below its predecessor's (when
    `check_sorted`).
    """
    size = out.shape[1]
    for k in range(starts.shape[0]):
        frame = out[k]
        if fresh:
            frame[:] = 0
        lo = starts[k]
        hi = ends[k]
        saturate = (not binary) and hi - lo > maxval
        prev = t[lo - 1] if lo > 0 else t[lo] if lo < t.shape[0] else 0
        for i in range(lo, hi):
            j = plut[p[i]] + ylut[y[i]] + xlut[x[i]]
            if j >= size:
                return _OUTSIDE, i
            if check_sorted:
                ti = t[i]
                if ti < prev:
                    return _UNSORTED, i
                prev = ti
            if binary:
                frame[j] = 1
            elif saturate:
                if frame[j] < maxval:
                    frame[j] += 1
            else:
                frame[j] += 1
    return _OK, -1


@numba.njit(cache=True, nogil=True)
def _first_unsorted(t):
    """Index of the first timestamp smaller than its predecessor, or -1."""
    for i in range(1, t.shape[0]):
        if t[i] < t[i - 1]:
            return i
    return -1


@numba.njit(cache=True, nogil=True)
def _search_left(t, values):
    """`np.searchsorted(t, values)` for a strided `t` (numpy would copy the field first)."""
    n = t.shape[0]
    out = np.empty(values.shape[0], np.int64)
    for j in range(values.shape[0]):
        v = values[j]
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) >> 1
            if t[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        out[j] = lo
    return out


@numba.njit(cache=True, nogil=True)
def _all_within(t, lo, hi):
    """True when every `t[i]` lies in `[lo, hi)` (a strided field, read in place)."""
    for i in range(t.shape[0]):
        if t[i] < lo or t[i] >= hi:
            return False
    return True


def _unvisited_unsorted(t: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    """First out-of-order index among events the counting loop did not visit, or -1.

    The loop checks each visited event against its predecessor; this covers the rest, so
    that together every adjacent pair is checked once.
    """
    order = np.argsort(starts, kind="stable")
    pos = 1  # pairs (i - 1, i) for i < pos are covered
    gaps = []
    for s, e in zip(starts[order].tolist(), ends[order].tolist(), strict=True):
        if e <= s:
            continue
        if s > pos:
            gaps.append((pos, s))
        pos = max(pos, e)
    if pos < len(t):
        gaps.append((pos, len(t)))
    for g0, g1 in gaps:
        bad = _first_unsorted(t[g0 - 1 : g1])
        if bad >= 0:
            return g0 - 1 + bad
    return -1


def frame_shape(
    sensor_size: Sequence[int],
    *,
    merge_polarity: bool = False,
    target_size: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """The `(P, H, W)` of one frame for a sensor `(W, H, P)` and the binning options."""
    w, h, p = (int(s) for s in sensor_size)
    if w <= 0 or h <= 0 or p not in (1, 2):
        raise ValueError(f"sensor_size must be (W, H, P) with P in (1, 2); got {sensor_size}")
    if target_size is not None:
        th, tw = (int(s) for s in target_size)
        if not (0 < th <= h and 0 < tw <= w):
            raise ValueError(
                f"target_size (H, W) = {tuple(target_size)} must be positive and at most the "
                f"sensor's (H, W) = ({h}, {w}); upsampling is not supported"
            )
        h, w = th, tw
    return (1 if merge_polarity else p, h, w)


class _Maps:
    """Look-up tables from sensor coordinates/polarity to frame indices."""

    def __init__(
        self, sensor_size: Sequence[int], merge_polarity: bool, target_size: Sequence[int] | None
    ) -> None:
        w, h, p = (int(s) for s in sensor_size)
        self.sensor_size = (w, h, p)
        self.shape = frame_shape(sensor_size, merge_polarity=merge_polarity,
                                 target_size=target_size)
        _, ho, wo = self.shape
        # Flat offsets into a frame `[P, H_out, W_out]`: plut[p] + ylut[y] + xlut[x], for every
        # value of the field types; values outside the sensor map past the end of the frame.
        past = np.int64(1) << 40
        self.xlut = np.full(1 << 16, past, np.int64)
        self.xlut[:w] = (np.arange(w, dtype=np.int64) * wo) // w
        self.ylut = np.full(1 << 16, past, np.int64)
        self.ylut[:h] = (np.arange(h, dtype=np.int64) * ho) // h * wo
        # A single-polarity sensor takes events of one polarity only (as Tonic); both are
        # accepted by the look-up table here and checked in `check_polarity`.
        self.plut = np.full(1 << 8, past, np.int64)
        self.plut[:2] = (np.zeros(2) if (merge_polarity or p == 1) else np.arange(2)) * (ho * wo)
        self.single_polarity = p == 1 and not merge_polarity

    def check_polarity(self, pol: np.ndarray) -> None:
        if self.single_polarity and len(pol) and pol.min() != pol.max():
            raise ValueError(
                "single-polarity sensor (P=1), but the events hold both polarities; "
                "pass merge_polarity=True to merge them"
            )


@functools.cache
def _maxval(dtype: np.dtype) -> int | float:
    return int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else float("inf")


def _count(
    events: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    maps: _Maps,
    out: np.ndarray,
    binary: bool,
    check_sorted: bool = False,
    fresh: bool = False,
) -> None:
    """Count `events[starts[k]:ends[k]]` into `out[k]` (in place; `fresh`: `out` is
    uninitialised, each frame is zeroed first); with `check_sorted`, raise unless all
    timestamps are non-decreasing."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    t = events["t"]
    code, bad = _accumulate(
        events["x"], events["y"], events["p"], t, starts, ends,
        maps.xlut, maps.ylut, maps.plut, out.reshape(len(out), -1), binary,
        _maxval(out.dtype), check_sorted, fresh,
    )
    if code == _OK and check_sorted:
        bad = _unvisited_unsorted(t, starts, ends)
        code = _UNSORTED if bad >= 0 else _OK
    if code in (_OUTSIDE, _UNSORTED):  # the contract's own check names the event
        lo = int(bad) - (code == _UNSORTED)
        validate_events(events[lo:int(bad) + 1], maps.sensor_size, first=lo)


def _check_one_mode(*modes: float | None) -> None:
    if sum(m is not None for m in modes) != 1:
        raise ValueError(
            "give exactly one of time_window, event_count, n_time_bins or n_event_bins"
        )


def slice_indices(
    events: np.ndarray,
    *,
    time_window: float | None = None,
    event_count: int | None = None,
    n_time_bins: int | None = None,
    n_event_bins: int | None = None,
    overlap: float = 0,
    include_incomplete: bool = False,
    start_time: float | None = None,
    end_time: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end event indices of every slice, as Tonic's slicers compute them.

    The formulas (rounding included) are those of `tonic.slicers.SliceByTime`,
    `SliceByEventCount`, `SliceByTimeBins` and `SliceByEventBins`, so that the frames match.
    """
    _check_one_mode(time_window, event_count, n_time_bins, n_event_bins)
    n = len(events)
    if time_window is not None:
        t = events["t"]
        stride = time_window - overlap
        if time_window <= 0 or stride <= 0:
            raise ValueError(f"need time_window > overlap >= 0; got {time_window}, {overlap}")
        t_start = t[0] if start_time is None else start_time
        t_end = t[-1] if end_time is None else end_time
        duration = t_end - t_start
        rnd = np.ceil if include_incomplete else np.floor
        n_slices = max(int(rnd((duration - time_window) / stride) + 1), 1)
        win_start = np.arange(n_slices) * stride + t_start
        win_end = win_start + time_window
        return _search_left(t, win_start), _search_left(t, win_end)
    if event_count is not None:
        stride = event_count - overlap
        if event_count <= 0 or stride <= 0:
            raise ValueError(f"need event_count > overlap >= 0; got {event_count}, {overlap}")
        count = min(event_count, n)
        rnd = np.ceil if include_incomplete else np.floor
        n_slices = int(rnd((n - count) / stride) + 1)
        starts = (np.arange(n_slices) * stride).astype(np.int64)
        return starts, np.minimum(starts + count, n)
    if not 0 <= overlap < 1:
        raise ValueError(
            f"overlap for n_time_bins/n_event_bins is a fraction in [0, 1); got {overlap}"
        )
    if n_time_bins is not None:
        if n_time_bins <= 0:
            raise ValueError(f"n_time_bins must be positive; got {n_time_bins}")
        t = events["t"]
        window = (t[-1] - t[0]) // n_time_bins * (1 + overlap)
        stride = window * (1 - overlap)
        win_start = np.arange(n_time_bins) * stride + t[0]
        return _search_left(t, win_start), _search_left(t, win_start + window)
    assert n_event_bins is not None
    if n_event_bins <= 0:
        raise ValueError(f"n_event_bins must be positive; got {n_event_bins}")
    count = int(n // n_event_bins * (1 + overlap))
    stride = int(count * (1 - overlap))
    starts = np.arange(n_event_bins, dtype=np.int64) * stride
    return starts, np.minimum(starts + count, n)


def to_frames(
    events: np.ndarray,
    sensor_size: Sequence[int],
    *,
    n_time_bins: int | None = None,
    time_window: float | None = None,
    event_count: int | None = None,
    n_event_bins: int | None = None,
    overlap: float = 0,
    include_incomplete: bool = False,
    start_time: float | None = None,
    end_time: float | None = None,
    binary: bool = False,
    merge_polarity: bool = False,
    target_size: Sequence[int] | None = None,
    dtype: np.dtype | type = np.int16,
) -> np.ndarray:
    """Bin time-ordered events into frames `[T, P, H, W]`, as `tonic.transforms.ToFrame`.

    Give exactly one of `time_window` (µs), `event_count`, `n_time_bins` or `n_event_bins`;
    `overlap`, `include_incomplete`, `start_time` and `end_time` mean what they mean in Tonic.
    Options: `binary` (1 where a pixel saw any event), `merge_polarity` (P = 1),
    `target_size` = `(H_out, W_out)` (sum pooling, see the module docstring) and `dtype`.

    An empty event array gives one zero frame (`n_time_bins`/`n_event_bins` frames for those
    modes) as Tonic does, but in the `[P, H, W]` layout of every other frame (Tonic's empty
    result is float `[P, W, H]`).
    """
    events = as_events(np.asarray(events))
    maps = _Maps(sensor_size, merge_polarity, target_size)
    dtype = np.dtype(dtype)
    _check_one_mode(time_window, event_count, n_time_bins, n_event_bins)
    if len(events) == 0:
        n_frames = n_time_bins or n_event_bins or 1
        return np.zeros((n_frames, *maps.shape), dtype)
    maps.check_polarity(events["p"])
    starts, ends = slice_indices(
        events,
        time_window=time_window,
        event_count=event_count,
        n_time_bins=n_time_bins,
        n_event_bins=n_event_bins,
        overlap=overlap,
        include_incomplete=include_incomplete,
        start_time=start_time,
        end_time=end_time,
    )
    out = np.empty((len(starts), *maps.shape), dtype)
    by_time = time_window is not None or n_time_bins is not None
    _count(events, starts, ends, maps, out, binary, check_sorted=by_time, fresh=True)
    return out


class StreamBinner:
    """Bins a live stream packet by packet; emits each bin `[P, H, W]` once it is complete.

    Give `time_window` (µs) or `event_count`. Time bins are `[t0 + k*w, t0 + (k+1)*w)`, with
    `t0` the first event's timestamp unless given. A time bin is complete when an event at or
    after its end arrives, or when `advance_to` says that time has passed; bins without
    events are emitted as zero frames (time passes), so a packet that starts long after the
    last one first emits all the empty bins in between. Empty bins are one shared read-only
    zero array, so a long gap costs no memory per bin. `flush()` emits the last, incomplete
    bin at the end of a stream (if it holds events).

    For any split of a time-ordered stream into packets, the frames of all `push` calls
    followed by `flush` equal `to_frames(events, ..., include_incomplete=True,
    start_time=t0, end_time=t_last + 1)` in time-window mode, and
    `to_frames(events, ..., event_count=n, include_incomplete=True)` in event-count mode.
    (`end_time=t_last + 1` makes the last slice hold the last event: Tonic's own end time,
    `t_last`, drops the events at `t_last` when the duration is a multiple of the window.)

    Events older than the open bin (out of order across packets, or before `t0`) cannot be
    binned any more: they are dropped and counted in `late_events`.
    """

    def __init__(
        self,
        sensor_size: Sequence[int],
        *,
        time_window: int | None = None,
        event_count: int | None = None,
        binary: bool = False,
        merge_polarity: bool = False,
        target_size: Sequence[int] | None = None,
        t0: int | None = None,
        dtype: np.dtype | type = np.int16,
    ) -> None:
        if (time_window is None) == (event_count is None):
            raise ValueError("give exactly one of time_window or event_count")
        if time_window is not None and (int(time_window) != time_window or time_window <= 0):
            raise ValueError(f"time_window must be a positive integer (µs); got {time_window}")
        if event_count is not None and (int(event_count) != event_count or event_count <= 0):
            raise ValueError(f"event_count must be a positive integer; got {event_count}")
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.time_window = None if time_window is None else int(time_window)
        self.event_count = None if event_count is None else int(event_count)
        self.binary = bool(binary)
        self.dtype = np.dtype(dtype)
        self._maps = _Maps(sensor_size, merge_polarity, target_size)
        self.frame_shape: tuple[int, int, int] = self._maps.shape
        self._zero = np.zeros(self.frame_shape, self.dtype)
        self._zero.flags.writeable = False
        self._t0 = None if t0 is None else int(t0)
        self._bin = 0  # index of the open time bin
        self._set_acc(np.zeros(self.frame_shape, self.dtype))
        self._acc_events = 0
        self._whole = np.zeros(1, np.int64)  # `starts` of a packet counted whole
        #: events pushed, events binned, events dropped as late, frames emitted (and empty ones)
        self.events_in = 0
        self.events_binned = 0
        self.late_events = 0
        self.frames_out = 0
        self.empty_frames = 0
        # Compile (or load from numba's cache) now, not on the first live packet.
        _count(np.zeros(0, EVENT_DTYPE), np.zeros(1, np.int64), np.zeros(1, np.int64),
               self._maps, self._acc[None], self.binary)

    def _set_acc(self, acc: np.ndarray) -> None:
        """The open bin's counts, and the same storage as one flat frame for `_count`."""
        self._acc = acc
        self._acc_flat = acc.reshape(1, -1)

    @property
    def t0(self) -> int | None:
        """Start of bin 0 in µs (None until the first event in time-window mode)."""
        return self._t0

    @property
    def open_bin_start_us(self) -> int | None:
        """Start of the bin that is being filled (time-window mode)."""
        if self._t0 is None or self.time_window is None:
            return None
        return self._t0 + self._bin * self.time_window

    def _close_open(self, out: list[np.ndarray], n_empty_after: int = 0) -> None:
        """Emit the open bin, then `n_empty_after` empty bins."""
        if self._acc_events:
            out.append(self._acc)
            self._set_acc(np.zeros(self.frame_shape, self.dtype))
            self._acc_events = 0
        else:
            out.append(self._zero)
            self.empty_frames += 1
        if n_empty_after > 0:
            out.extend([self._zero] * n_empty_after)
            self.empty_frames += n_empty_after
        self.frames_out += 1 + n_empty_after

    def push(self, packet: np.ndarray) -> list[np.ndarray]:
        """Add a packet of events; returns the frames `[P, H, W]` completed by it, in order."""
        ev = as_events(np.asarray(packet))
        self.events_in += len(ev)
        if len(ev) == 0:
            return []
        self._maps.check_polarity(ev["p"])
        if self.event_count is not None:
            return self._push_count(ev)
        return self._push_time(ev)

    def _push_count(self, ev: np.ndarray) -> list[np.ndarray]:
        n, count = len(ev), self.event_count
        assert count is not None
        out: list[np.ndarray] = []
        fill = min(count - self._acc_events, n)
        _count(ev, np.array([0]), np.array([fill]), self._maps, self._acc[None], self.binary)
        self._acc_events += fill
        self.events_binned += fill
        if self._acc_events == count:
            self._close_open(out)
        rest = n - fill
        if rest <= 0:
            return out
        n_full, tail = divmod(rest, count)
        bounds = fill + np.arange(n_full + 1, dtype=np.int64) * count
        if n_full:
            block = np.empty((n_full, *self.frame_shape), self.dtype)
            _count(ev, bounds[:-1], bounds[1:], self._maps, block, self.binary, fresh=True)
            out.extend(block)
            self.frames_out += n_full
        if tail:
            _count(ev, bounds[-1:], np.array([n]), self._maps, self._acc[None], self.binary)
            self._acc_events = tail
        self.events_binned += rest
        return out

    def _push_time(self, ev: np.ndarray) -> list[np.ndarray]:
        w = self.time_window
        assert w is not None
        t = ev["t"]
        if self._t0 is None:
            self._t0 = int(t[0])
        start = self._t0 + self._bin * w
        if _all_within(t, start, start + w):  # the usual live packet: all in the open bin
            _count(ev, self._whole, np.array([len(ev)], np.int64), self._maps, self._acc_flat,
                   self.binary)
            self._acc_events += len(ev)
            self.events_binned += len(ev)
            return []
        k = (t - self._t0) // w
        late = k < self._bin
        if late.any():
            self.late_events += int(late.sum())
            keep = ~late
            ev, k = ev[keep], k[keep]
            if len(ev) == 0:
                return []
        if _first_unsorted(k) >= 0:
            order = np.argsort(k, kind="stable")
            ev, k = ev[order], k[order]
        # Runs of equal bin index: bins[j] holds events starts[j]:ends[j].
        cut = np.flatnonzero(k[1:] != k[:-1]) + 1
        starts = np.concatenate(([0], cut)).astype(np.int64)
        ends = np.concatenate((cut, [len(k)])).astype(np.int64)
        bins = k[starts]
        out: list[np.ndarray] = []
        if bins[0] == self._bin:
            _count(ev, starts[:1], ends[:1], self._maps, self._acc[None], self.binary)
            self._acc_events += int(ends[0] - starts[0])
            starts, ends, bins = starts[1:], ends[1:], bins[1:]
        if len(bins):
            block = np.empty((len(bins), *self.frame_shape), self.dtype)
            _count(ev, starts, ends, self._maps, block, self.binary, fresh=True)
            self._close_open(out, int(bins[0] - self._bin - 1))
            for j in range(len(bins) - 1):
                out.append(block[j])
                gap = int(bins[j + 1] - bins[j] - 1)
                if gap:
                    out.extend([self._zero] * gap)
                    self.empty_frames += gap
                self.frames_out += 1 + gap
            self._set_acc(block[-1].copy())
            self._acc_events = int(ends[-1] - starts[-1])
            self._bin = int(bins[-1])
        self.events_binned += len(ev)
        return out

    def advance_to(self, t_us: int) -> list[np.ndarray]:
        """Declare that no event before `t_us` will come; emits the bins that ended by then.

        Before the first event (with no `t0` given) there is no bin grid yet: nothing happens.
        In event-count mode bins close on counts only: nothing happens.
        """
        if self.time_window is None or self._t0 is None:
            return []
        kt = (int(t_us) - self._t0) // self.time_window
        out: list[np.ndarray] = []
        if kt > self._bin:
            self._close_open(out, kt - self._bin - 1)
            self._bin = kt
        return out

    def flush(self) -> list[np.ndarray]:
        """Emit the open, incomplete bin if it holds events (end of stream).

        The stream may go on afterwards: the next events land in the following bins.
        """
        if not self._acc_events:
            return []
        out: list[np.ndarray] = []
        self._close_open(out)
        self._bin += 1
        return out
