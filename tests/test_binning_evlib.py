"""`to_frames` against evlib's event-frame functions, where their definitions agree: evlib's
stacked histogram counts events in windows from the first event's time (ours and Tonic's time
windows, whose last incomplete window it keeps and we drop), and its event frame is Tonic's
`n_time_bins` frame."""

from __future__ import annotations

import numpy as np
import pytest

from spikestream import make_events
from spikestream.pipeline.binning import to_frames

evlib = pytest.importorskip("evlib", reason="evlib is not installed (spikestream[bench])")
pl = pytest.importorskip("polars", reason="polars (evlib's frame library) is not installed")

W, H = 37, 29  # not square, so a transposed frame cannot pass


def random_events(seed: int, n: int, span: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span, n)) + int(rng.integers(0, 5000))
    return make_events(rng.integers(0, W, n), rng.integers(0, H, n), t, rng.integers(0, 2, n))


def frame_of(ev: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"x": ev["x"], "y": ev["y"], "polarity": ev["p"],
                         "t": pl.Series(ev["t"]).cast(pl.Duration("us"))})


@pytest.mark.parametrize("seed,n,window_us", [(0, 20_000, 1000), (1, 5000, 777), (2, 300, 5000)])
def test_time_windows_equal_evlib_stacked_histogram(seed, n, window_us):
    ev = random_events(seed, n, 60_000)
    ours = to_frames(ev, (W, H, 2), time_window=window_us)
    long = evlib.create_stacked_histogram(frame_of(ev), H, W, bins=len(ours),
                                          window_duration_ms=window_us / 1000)
    theirs = evlib.densify_event_frame(long, len(ours), 2, H, W)
    assert theirs.shape == ours.shape and ours.sum() > 0
    np.testing.assert_array_equal(theirs, ours)


@pytest.mark.parametrize("bins", [1, 7, 20])
def test_time_bins_equal_evlib_event_frame(bins):
    ev = random_events(bins, 8000, 50_000)
    ours = to_frames(ev, (W, H, 2), n_time_bins=bins)
    theirs = evlib.densify_event_frame(
        evlib.create_event_frame(frame_of(ev), H, W, n_time_bins=bins), bins, 2, H, W)
    assert theirs.shape == ours.shape and ours.sum() > 0
    np.testing.assert_array_equal(theirs, ours)
