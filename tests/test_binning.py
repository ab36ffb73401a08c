"""The binner against Tonic's ToFrame, and the stream binner against the offline binner."""

from __future__ import annotations

import numpy as np
import pytest
import tonic
from hypothesis import given, settings
from hypothesis import strategies as st

from spikestream import EventFormatError, make_events
from spikestream.pipeline.binning import StreamBinner, frame_shape, to_frames

W, H = 23, 17  # not square, so a transposed frame cannot pass


def random_events(seed: int, n: int, span: int = 50_000, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span + 1, n)) + int(rng.integers(0, 10_000))
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n))


def tonic_frames(events: np.ndarray, sensor_size=(W, H, 2), **kw) -> np.ndarray:
    return tonic.transforms.ToFrame(sensor_size=sensor_size, **kw)(events.copy())


TONIC_CASES = [
    dict(time_window=1000),
    dict(time_window=1000, include_incomplete=True),
    dict(time_window=1000, overlap=250),
    dict(time_window=1000, overlap=250, include_incomplete=True),
    dict(time_window=777, start_time=-3000, end_time=70_000),
    dict(time_window=2000, start_time=5000, include_incomplete=True),
    dict(time_window=10**6),  # window longer than the recording: one slice
    dict(event_count=100),
    dict(event_count=100, include_incomplete=True),
    dict(event_count=100, overlap=30),
    dict(event_count=97, overlap=13, include_incomplete=True),
    dict(event_count=10**6),  # more than there are events: one slice of all of them
    dict(n_time_bins=1),
    dict(n_time_bins=9),
    dict(n_time_bins=9, overlap=0.25),
    dict(n_event_bins=7),
    dict(n_event_bins=7, overlap=0.5),
]


def case_id(kw: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("kw", TONIC_CASES, ids=case_id)
@pytest.mark.parametrize("n", [1, 2, 1500])
def test_same_frames_as_tonic(kw: dict, n: int) -> None:
    ev = random_events(n, n)
    ours = to_frames(ev, (W, H, 2), **kw)
    ref = tonic_frames(ev, **kw)
    assert ours.shape == ref.shape
    assert ours.dtype == ref.dtype == np.int16
    np.testing.assert_array_equal(ours, ref)
    if n == 1500:
        assert ours.sum() > 0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 400),
    span=st.integers(0, 20_000),
    window=st.integers(1, 5000),
    overlap_frac=st.sampled_from([0.0, 0.1, 0.5]),
    incomplete=st.booleans(),
)
def test_time_window_matches_tonic_property(seed, n, span, window, overlap_frac, incomplete):
    ev = random_events(seed, n, span=span)
    kw = dict(time_window=window, overlap=int(window * overlap_frac),
              include_incomplete=incomplete)
    np.testing.assert_array_equal(to_frames(ev, (W, H, 2), **kw), tonic_frames(ev, **kw))


def test_single_polarity_sensor_as_tonic() -> None:
    ev = random_events(3, 500)
    ev["p"] = 1
    ours = to_frames(ev, (W, H, 1), time_window=5000)
    np.testing.assert_array_equal(ours, tonic_frames(ev, (W, H, 1), time_window=5000))
    mixed = random_events(4, 500)
    with pytest.raises(ValueError, match="both polarities"):
        to_frames(mixed, (W, H, 1), time_window=5000)


def test_empty_events() -> None:
    ev = make_events([], [], [], [])
    for kw, n_frames in [(dict(time_window=1000), 1), (dict(event_count=10), 1),
                         (dict(n_time_bins=4), 4), (dict(n_event_bins=3), 3)]:
        ours = to_frames(ev, (W, H, 2), **kw)
        ref = tonic_frames(ev, **kw)
        # Tonic gives float zeros in a [P, W, H] layout here; ours keeps [P, H, W].
        assert ref.shape == (n_frames, 2, W, H) and not ref.any()
        assert ours.shape == (n_frames, 2, H, W) and not ours.any()


def test_single_event_lands_in_its_pixel() -> None:
    ev = make_events([5], [9], [123], [1])
    for kw in [dict(time_window=1000), dict(event_count=4), dict(n_time_bins=3)]:
        ours = to_frames(ev, (W, H, 2), **kw)
        np.testing.assert_array_equal(ours, tonic_frames(ev, **kw))
    f = to_frames(ev, (W, H, 2), time_window=10)
    assert f.shape == (1, 2, H, W) and f[0, 1, 9, 5] == 1 and f.sum() == 1


def test_binary_and_merged_polarity() -> None:
    ev = random_events(5, 3000)
    counts = to_frames(ev, (W, H, 2), time_window=4000)
    np.testing.assert_array_equal(
        to_frames(ev, (W, H, 2), time_window=4000, binary=True), (counts > 0).astype(np.int16)
    )
    merged = to_frames(ev, (W, H, 2), time_window=4000, merge_polarity=True)
    assert merged.shape == (counts.shape[0], 1, H, W)
    np.testing.assert_array_equal(merged[:, 0], counts.sum(axis=1))
    merged_bin = to_frames(ev, (W, H, 2), time_window=4000, merge_polarity=True, binary=True)
    np.testing.assert_array_equal(merged_bin[:, 0], counts.sum(axis=1) > 0)


def test_integer_downsampling_is_sum_pooling_and_matches_tonic_downsample() -> None:
    w, h = 64, 48
    ev = random_events(6, 5000, w=w, h=h)
    full = to_frames(ev, (w, h, 2), time_window=5000)
    small = to_frames(ev, (w, h, 2), time_window=5000, target_size=(12, 16))  # factor 4
    t, p = full.shape[:2]
    pooled = full.reshape(t, p, 12, 4, 16, 4).sum(axis=(3, 5))
    np.testing.assert_array_equal(small, pooled)
    # Tonic's Downsample scales (and floors) the coordinates; then ToFrame on the small sensor.
    down = tonic.transforms.Downsample(spatial_factor=0.25)(ev.copy())
    np.testing.assert_array_equal(small, tonic_frames(down, (16, 12, 2), time_window=5000))


def test_non_integer_downsampling_floors_scaled_coordinates() -> None:
    w, h = 23, 17
    ev = random_events(7, 4000)
    out = to_frames(ev, (w, h, 2), event_count=1000, target_size=(5, 7))
    ref = np.zeros((4, 2, 5, 7), np.int16)
    for i, e in enumerate(ev):
        ref[i // 1000, e["p"], e["y"] * 5 // h, e["x"] * 7 // w] += 1
    np.testing.assert_array_equal(out, ref)
    assert out.sum() == 4000


def test_counts_saturate_instead_of_wrapping() -> None:
    n = 40_000
    ev = make_events(np.zeros(n), np.zeros(n), np.arange(n), np.zeros(n))
    assert to_frames(ev, (W, H, 2), event_count=n)[0, 0, 0, 0] == np.iinfo(np.int16).max
    assert to_frames(ev, (W, H, 2), event_count=n, dtype=np.int32)[0, 0, 0, 0] == n


def test_bad_input_is_named() -> None:
    ev = random_events(8, 100)
    ev["x"][40] = W
    with pytest.raises(EventFormatError, match="record 40"):
        to_frames(ev, (W, H, 2), time_window=1000)
    ev = random_events(9, 100)
    ev["t"][60] = ev["t"][59] - 1
    with pytest.raises(EventFormatError, match="record 60"):
        to_frames(ev, (W, H, 2), time_window=1000)
    with pytest.raises(ValueError, match="exactly one"):
        to_frames(ev, (W, H, 2), time_window=1000, event_count=3)
    with pytest.raises(ValueError, match="upsampling"):
        frame_shape((W, H, 2), target_size=(H + 1, W))


# -- the stream binner -------------------------------------------------------------------------


def split_points(draw_sizes: list[int], n: int) -> list[int]:
    cuts = np.cumsum(draw_sizes)
    return sorted(set(int(c) for c in cuts if 0 < c < n))


def stream(binner: StreamBinner, ev: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    for packet in np.split(ev, cuts):
        frames += binner.push(packet)
    return frames + binner.flush()


OPTIONS = st.fixed_dictionaries(
    {
        "binary": st.booleans(),
        "merge_polarity": st.booleans(),
        "target_size": st.sampled_from([None, (17, 23), (8, 11), (5, 7)]),
    }
)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 600),
    gaps=st.booleans(),
    window=st.integers(1, 3000),
    sizes=st.lists(st.integers(0, 200), max_size=30),
    opts=OPTIONS,
    t0_back=st.one_of(st.none(), st.integers(0, 5000)),
)
def test_stream_time_window_any_split_equals_offline(seed, n, gaps, window, sizes, opts, t0_back):
    ev = random_events(seed, n, span=20_000)
    if gaps:  # long silences between bursts: empty bins must still come out
        ev["t"] += (np.arange(n) // 50) * 40 * window
    t0 = None if t0_back is None else int(ev["t"][0]) - t0_back
    binner = StreamBinner((W, H, 2), time_window=window, t0=t0, **opts)
    frames = stream(binner, ev, split_points(sizes, n))
    ref = to_frames(ev, (W, H, 2), time_window=window, include_incomplete=True,
                    start_time=t0, end_time=int(ev["t"][-1]) + 1, **opts)
    assert len(frames) == len(ref)
    np.testing.assert_array_equal(np.stack(frames), ref)
    assert binner.events_binned == n and binner.late_events == 0
    assert binner.frames_out == len(ref)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 600),
    count=st.integers(1, 150),
    sizes=st.lists(st.integers(0, 300), max_size=20),
    opts=OPTIONS,
)
def test_stream_event_count_any_split_equals_offline(seed, n, count, sizes, opts):
    ev = random_events(seed, n)
    binner = StreamBinner((W, H, 2), event_count=count, **opts)
    frames = stream(binner, ev, split_points(sizes, n))
    ref = to_frames(ev, (W, H, 2), event_count=count, include_incomplete=True, **opts)
    np.testing.assert_array_equal(np.stack(frames), ref)
    np.testing.assert_array_equal(
        np.stack(frames[: n // count]) if n >= count else np.zeros((0, *ref.shape[1:])),
        to_frames(ev, (W, H, 2), event_count=count, **opts)[: n // count],
    )


def test_far_later_packet_emits_the_empty_bins_between() -> None:
    binner = StreamBinner((W, H, 2), time_window=1000)
    assert binner.push(make_events([1], [2], [500], [0])) == []
    frames = binner.push(make_events([3], [4], [500 + 1000 * 1000 + 10], [1]))
    assert len(frames) == 1000
    assert frames[0][0, 2, 1] == 1 and frames[0].sum() == 1
    assert all(not f.any() for f in frames[1:])
    assert binner.empty_frames == 999
    assert len({id(f) for f in frames[1:]}) == 1  # one shared zero frame, no memory per bin
    (last,) = binner.flush()
    assert last[1, 4, 3] == 1


def test_advance_to_closes_bins_as_time_passes() -> None:
    binner = StreamBinner((W, H, 2), time_window=1000, t0=0)
    assert binner.advance_to(999) == []
    assert len(binner.advance_to(1000)) == 1  # bin [0, 1000) is over
    binner.push(make_events([1], [1], [1500], [1]))
    frames = binner.advance_to(4200)  # [1000, 2000) with the event, then two empty bins
    assert len(frames) == 3 and frames[0].sum() == 1 and not frames[1].any()
    assert binner.open_bin_start_us == 4000
    assert binner.push(make_events([1], [1], [3999], [1])) == []  # late: counted, not binned
    assert binner.late_events == 1
    assert binner.flush() == []  # the open bin is empty


def test_stream_binner_before_any_event_and_unsorted_packet() -> None:
    binner = StreamBinner((W, H, 2), time_window=100)
    assert binner.advance_to(10**6) == []  # no grid before the first event
    ev = random_events(10, 300, span=1000)
    shuffled = ev[np.random.default_rng(0).permutation(300)]
    shuffled = np.concatenate([ev[:1], shuffled])  # first event fixes t0
    frames = binner.push(shuffled) + binner.flush()
    ref = to_frames(np.sort(np.concatenate([ev[:1], ev]), order="t", kind="stable"),
                    (W, H, 2), time_window=100, include_incomplete=True,
                    end_time=int(ev["t"][-1]) + 1)
    np.testing.assert_array_equal(np.stack(frames), ref)


def test_fresh_output_is_zeroed_frame_by_frame() -> None:
    """`to_frames` counts into an uninitialised output, each frame zeroed just before its
    events (cache-friendly): frames over garbage, empty slices included, equal frames counted
    into zeros."""
    from spikestream.pipeline.binning import _count, _Maps, slice_indices

    rng = np.random.default_rng(3)
    t = np.sort(rng.integers(0, 50_000, 2_000))
    t[500:900] = t[499]  # a burst, then a gap: slices without events
    t[900:] += 30_000
    ev = make_events(rng.integers(0, 40, 2_000), rng.integers(0, 30, 2_000), t,
                     rng.integers(0, 2, 2_000))
    maps = _Maps((40, 30, 2), False, None)
    starts, ends = slice_indices(ev, time_window=1_000, overlap=300)
    assert (starts == ends).any()
    ref = np.zeros((len(starts), *maps.shape), np.int16)
    _count(ev, starts, ends, maps, ref, False)
    dirty = np.full_like(ref, 7)
    _count(ev, starts, ends, maps, dirty, False, fresh=True)
    np.testing.assert_array_equal(dirty, ref)
    np.testing.assert_array_equal(to_frames(ev, (40, 30, 2), time_window=1_000, overlap=300), ref)
