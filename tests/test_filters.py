"""Noise filters: any split into packets gives the offline result; against tonic's `Denoise`
and `RefractoryPeriod` and dv-processing's `BackgroundActivityNoiseFilter` where the definitions
agree; the hot-pixel filter against its definition; `render --filter`."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import tonic

from spikestream import Recording, make_events
from spikestream.cli import main
from spikestream.datasets import write_events
from spikestream.devices.filters import (
    BackgroundActivityFilter,
    FilterChain,
    HotPixelFilter,
    RefractoryFilter,
    background_activity,
    filter_from_spec,
    hot_pixel,
    refractory,
)

W, H = 40, 30


def noisy_events(n: int, seed: int, t0: int = 50_000, span: int = 2_000_000) -> np.ndarray:
    """Clustered activity (a moving blob) plus uniform noise, time-ordered, t >= t0."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t0, t0 + span, n))
    blob = rng.random(n) < 0.6
    cx = (W / 2 + 10 * np.sin(t / 2e5)).astype(int)
    x = np.where(blob, np.clip(cx + rng.integers(-2, 3, n), 0, W - 1), rng.integers(0, W, n))
    y = np.where(blob, np.clip(H // 2 + rng.integers(-2, 3, n), 0, H - 1), rng.integers(0, H, n))
    return make_events(x, y, t, rng.integers(0, 2, n))


def random_split(ev: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.sort(rng.integers(0, len(ev) + 1, rng.integers(1, 40)))
    return np.split(ev, cuts)


def make_filters() -> list:
    return [BackgroundActivityFilter((W, H, 2), 5_000, 8),
            BackgroundActivityFilter((W, H, 2), 3_000, 4),
            RefractoryFilter((W, H, 2), 2_000),
            HotPixelFilter((W, H, 2), 150.0, 300_000),
            FilterChain([RefractoryFilter((W, H, 2), 500),
                         BackgroundActivityFilter((W, H, 2), 5_000)])]


@pytest.mark.parametrize("seed", range(4))
def test_any_split_gives_the_offline_result(seed: int) -> None:
    ev = noisy_events(20_000, seed)
    rng = np.random.default_rng(100 + seed)
    for offline, live in zip(make_filters(), make_filters(), strict=True):
        whole = offline(ev)
        assert 0 < len(whole) < len(ev)
        parts = [live(p) for p in random_split(ev, rng)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        assert (live.seen, live.kept) == (len(ev), len(whole))
        live.reset()
        np.testing.assert_array_equal(live(ev), whole)  # reset forgets the stream


@pytest.mark.parametrize(("filter_time", "seed"), [(1_000, 0), (5_000, 1), (20_000, 2)])
def test_background_activity_equals_tonic_denoise(filter_time: int, seed: int) -> None:
    ev = noisy_events(15_000, seed, t0=filter_time)  # tonic's start-up convention agrees here
    want = tonic.transforms.Denoise(filter_time=filter_time)(ev)
    got = background_activity(ev, (W, H, 2), filter_time, neighbours=4)
    np.testing.assert_array_equal(got, want)
    assert len(want) < len(ev)


@pytest.mark.parametrize(("delta", "seed"), [(0, 0), (1_000, 1), (30_000, 2)])
def test_refractory_equals_tonic(delta: int, seed: int) -> None:
    ev = noisy_events(15_000, seed, t0=1)
    want = tonic.transforms.RefractoryPeriod(delta=delta)(ev)
    np.testing.assert_array_equal(refractory(ev, (W, H, 2), delta), want)


@pytest.mark.parametrize(("duration", "seed"), [(2_000, 0), (10_000, 1)])
def test_background_activity_equals_dv_processing(duration: int, seed: int) -> None:
    dv = pytest.importorskip("dv_processing")
    ev = noisy_events(8_000, seed, t0=duration)
    store = dv.EventStore()
    for e in ev:
        store.push_back(int(e["t"]), int(e["x"]), int(e["y"]), bool(e["p"]))
    f = dv.noise.BackgroundActivityNoiseFilter(
        (W, H), backgroundActivityDuration=datetime.timedelta(microseconds=duration))
    f.accept(store)
    want = f.generateEvents().numpy()
    got = background_activity(ev, (W, H, 2), duration, neighbours=8)
    assert len(got) == len(want) < len(ev)
    for ours, theirs in (("t", "timestamp"), ("x", "x"), ("y", "y"), ("p", "polarity")):
        np.testing.assert_array_equal(got[ours], want[theirs].astype(got[ours].dtype))


def test_hot_pixel_definition() -> None:
    rng = np.random.default_rng(5)
    ev = noisy_events(10_000, 5)
    hot = make_events(np.full(3_000, 3), np.full(3_000, 4),
                      np.sort(rng.integers(ev["t"][0], ev["t"][-1], 3_000)), np.ones(3_000))
    allev = np.concatenate([ev, hot])
    allev = allev[np.argsort(allev["t"], kind="stable")]
    learn = 400_000
    got = hot_pixel(allev, (W, H, 2), max_rate_hz=200, learn_us=learn)
    end = allev["t"][0] + learn
    learning = allev[allev["t"] < end]
    counts = np.zeros((H, W), int)
    np.add.at(counts, (learning["y"], learning["x"]), 1)
    hot_mask = counts > 200 * learn / 1e6
    assert hot_mask[4, 3]
    want = allev[(allev["t"] < end) | ~hot_mask[allev["y"], allev["x"]]]
    np.testing.assert_array_equal(got, want)


def test_filters_refuse_events_off_the_sensor() -> None:
    ev = make_events([1, W], [1, 1], [10, 20], [1, 1])
    with pytest.raises(ValueError, match="outside"):
        refractory(ev, (W, H, 2), 100)


def test_spec_and_render_filter(tmp_path: Path) -> None:
    f = filter_from_spec("refractory:500, ba:5000:4", (W, H, 2))
    assert isinstance(f, FilterChain)
    ev = noisy_events(5_000, 7)
    want = background_activity(refractory(ev, (W, H, 2), 500), (W, H, 2), 5_000, 4)
    np.testing.assert_array_equal(f(ev), want)
    with pytest.raises(ValueError, match="unknown filter"):
        filter_from_spec("median:3", (W, H, 2))
    import imageio.v3 as iio

    src = tmp_path / "ev.h5"
    write_events(src, Recording(ev, (W, H, 2)))
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["render", str(src), str(a), "--scale", "1", "--saturation", "1000"]) == 0
    assert main(["render", str(src), str(b), "--scale", "1", "--saturation", "1000",
                 "--filter", "refractory:500,ba:5000:4"]) == 0
    from spikestream.devices.render import FrameTiming, render_frames

    timing = FrameTiming(int(ev["t"][0]), float(ev["t"][-1] - ev["t"][0] + 1), 1)
    np.testing.assert_array_equal(
        iio.imread(b), render_frames(want, (W, H, 2), timing, saturation=1000)[0])
    assert not np.array_equal(iio.imread(a), iio.imread(b))


def test_convert_and_stream_filter_equal_the_offline_filter(tmp_path: Path) -> None:
    """`convert --filter` and `stream --filter` run the stateful filter packet by packet over a
    file read in small chunks: the events written, and the events the stream counts, are
    exactly those of filtering the whole recording at once."""
    import json

    from spikestream.datasets import read_events

    ev = noisy_events(20_000, 11)
    ev = ev[ev["x"] < 34]  # on N-MNIST's 34x34 sensor, for the shipped `nmnist` checkpoint
    size = (34, 34, 2)
    src = tmp_path / "ev.h5"
    write_events(src, Recording(ev, size))
    spec = "refractory:500,ba:5000:4"
    want = filter_from_spec(spec, size)(ev)
    assert 0 < len(want) < len(ev)
    from spikestream.cli.convert import convert

    for out in (tmp_path / "f.h5", tmp_path / "f.npy"):
        assert convert(str(src), str(out), chunk_events=997, progress=False,
                       filter_spec=spec) == len(want)
        np.testing.assert_array_equal(read_events(out).events, want)
    assert main(["convert", str(src), str(tmp_path / "g.csv"), "--filter", spec]) == 0
    np.testing.assert_array_equal(read_events(tmp_path / "g.csv").events, want)

    def stream_events(*extra: str) -> int:
        out = tmp_path / "stream.json"
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["stream", "--source", f"file:{src}", "--checkpoint", "nmnist",
                         "--json", *extra]) == 0
        out.write_text(buf.getvalue())
        return json.loads(buf.getvalue().strip().splitlines()[-1])["events"]

    assert stream_events() == len(ev)
    assert stream_events("--filter", spec) == len(want)
