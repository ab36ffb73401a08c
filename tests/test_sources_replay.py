"""ReplayCamera: recordings as live streams, packets by duration or count, paced in time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spikestream import EVENT_DTYPE, EventFormatError, Recording, make_events
from spikestream.devices import ReplayCamera
from spikestream.devices.base import split_packets

SIZE = (34, 34, 2)


def _random_events(n: int, span_us: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_us, n)) + 1_000
    return make_events(rng.integers(0, 34, n), rng.integers(0, 34, n), t, rng.integers(0, 2, n))


@pytest.fixture(scope="module")
def nmnist(real_data) -> Recording:
    """A real N-MNIST sample read with Tonic's decoder (independent of this package)."""
    tonic = pytest.importorskip("tonic")
    path = real_data / "nmnist-small" / "train" / "1.bs2"
    raw = tonic.io.read_mnist_file(
        str(path), dtype=np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
    )
    return Recording(raw, SIZE, {"path": str(path)})


@pytest.mark.parametrize("packet_us", [37, 997, 5000, 10_000_000])
def test_time_packets_cover_the_recording_in_windows(nmnist, packet_us):
    cam = ReplayCamera(nmnist, speed=None, packet_us=packet_us)
    assert cam.sensor_size == SIZE
    packets = list(cam)
    ev = np.concatenate(packets)
    assert np.array_equal(ev, nmnist.events)
    t0 = int(nmnist.events["t"][0])
    for k, p in enumerate(packets):
        if len(p):
            assert p["t"].min() >= t0 + k * packet_us
            assert p["t"].max() < t0 + (k + 1) * packet_us
    assert cam.counters.events == len(nmnist) and cam.counters.packets == len(packets)
    span = int(nmnist.events["t"][-1]) - t0
    assert len(packets) == span // packet_us + 1


@pytest.mark.parametrize("n", [1, 333, 4096])
def test_count_packets(nmnist, n):
    packets = list(ReplayCamera(nmnist, speed=None, packet_events=n))
    sizes = [len(p) for p in packets]
    assert all(s == n for s in sizes[:-1]) and 0 < sizes[-1] <= n
    assert np.array_equal(np.concatenate(packets), nmnist.events)


def test_packets_iterable_gives_the_same_packets_as_the_whole_array():
    ev = _random_events(20_000, 2_000_000)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.integers(0, len(ev), 40))
    chunks = np.split(ev, cuts)  # includes empty chunks
    for kw in (dict(packet_us=7_000), dict(packet_events=500)):
        whole = list(ReplayCamera(ev, SIZE, speed=None, **kw))
        lazy = list(ReplayCamera(iter(chunks), SIZE, speed=None, **kw))
        assert len(whole) == len(lazy)
        assert all(np.array_equal(a, b) for a, b in zip(whole, lazy, strict=True))
        # and the packets of the one-shot splitter (a vectorised second implementation)
        ref = [p for _, p in split_packets(ev, **kw)]
        assert len(ref) == len(whole)
        assert all(np.array_equal(a, b) for a, b in zip(whole, ref, strict=True))


def test_real_time_and_speed_factor_pacing():
    ev = _random_events(2_000, 300_000)  # 0.3 s of events
    timings = {}
    for speed in (1.0, 4.0, None):
        t0 = time.perf_counter()
        n = sum(len(p) for p in ReplayCamera(ev, SIZE, speed=speed, packet_us=10_000))
        timings[speed] = time.perf_counter() - t0
        assert n == len(ev)
    span = (int(ev["t"][-1]) - int(ev["t"][0])) / 1e6
    assert span * 0.95 <= timings[1.0] < span + 0.25
    assert span / 4 * 0.9 <= timings[4.0] < span / 4 + 0.2
    assert timings[None] < timings[4.0]


def test_context_manager_and_counters(nmnist):
    with ReplayCamera(nmnist, speed=None, packet_us=10_000) as cam:
        assert cam.is_open
        first = next(iter(cam))
        assert len(first) > 0
    assert not cam.is_open
    assert cam.counters.as_dict()["malformed"] == 0


def test_disordered_recording_is_refused_with_a_clear_error():
    ev = _random_events(1000, 100_000)
    ev["t"][500] = ev["t"][0] - 1
    with pytest.raises(EventFormatError, match="back|before"):
        list(ReplayCamera(ev, SIZE, speed=None, packet_events=100))
    outside = _random_events(100, 10_000)
    outside["x"][3] = 40
    with pytest.raises(EventFormatError, match="outside"):
        list(ReplayCamera(outside, SIZE, speed=None))


@pytest.mark.parametrize("field,value,message", [
    ("x", SIZE[0], "outside the sensor"), ("y", SIZE[1], "outside the sensor"),
    ("p", 2, "outside the sensor"), ("t", -1, "goes back"),
])
def test_every_packet_is_checked_and_the_first_bad_event_named(field, value, message):
    ev = _random_events(1000, 100_000)
    bad = ev.copy()
    bad[field][437] = value if field != "t" else bad["t"][436] - 1
    with pytest.raises(EventFormatError, match=message) as err:
        list(ReplayCamera(bad, SIZE, speed=None, packet_events=1000))
    assert err.value.record == 437
    # the same events, intact, pass
    assert len(np.concatenate(list(ReplayCamera(ev, SIZE, speed=None, packet_events=1000)))) \
        == 1000


def test_bad_arguments():
    ev = np.zeros(3, dtype=EVENT_DTYPE)
    with pytest.raises(ValueError, match="sensor_size"):
        ReplayCamera(ev)
    with pytest.raises(ValueError):
        ReplayCamera(ev, SIZE, packet_us=10, packet_events=10)
    with pytest.raises(ValueError):
        ReplayCamera(ev, SIZE, speed=0)


# -- files streamed in chunks, and time gaps --------------------------------------------------
REAL_FILES = ["aedat2/IMU_rotDisk.aedat", "aedat4/sample.aedat4", "prophesee/evt3_sample.raw",
              "prophesee/dat_test_NCARS.dat", "nmnist-small/train/1.bs2"]


@pytest.mark.parametrize("name", REAL_FILES)
def test_a_file_streamed_in_chunks_replays_as_the_whole_recording(real_data, name):
    from spikestream.datasets import iter_events, read_events

    path = real_data / name
    rec = read_events(path)
    for kw in (dict(packet_us=5000), dict(packet_events=777)):
        whole = list(ReplayCamera(rec, speed=None, **kw))
        cam = ReplayCamera(lambda: iter_events(path, chunk_events=1000), speed=None, **kw)
        assert cam.sensor_size == rec.sensor_size
        for _ in range(2):  # a file replays again: the factory reopens it
            lazy = list(cam)
            assert len(lazy) == len(whole)
            assert all(np.array_equal(a, b) for a, b in zip(whole, lazy, strict=True))
        # independent truth: window k holds the events with (t - t0) // w == k; count packets
        # hold n events each but the last
        t = rec.events["t"]
        if "packet_us" in kw:
            want = np.bincount((t - t[0]) // kw["packet_us"])
        else:
            want = [min(777, len(t) - i) for i in range(0, len(t), 777)]
        assert [len(p) for p in whole] == list(want)
        assert np.array_equal(np.concatenate(whole), rec.events)


def test_a_file_is_streamed_with_bounded_memory(tmp_path):
    import tracemalloc

    from spikestream.datasets import iter_events

    n = 4_000_000  # 64 MB of events
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["t"] = np.arange(n) // 4
    ev["x"] = np.arange(n) % 34
    path = tmp_path / "big.npy"
    np.save(path, ev)
    del ev
    cam = ReplayCamera(lambda: iter_events(path, chunk_events=1 << 15), speed=None,
                       packet_us=2000)
    tracemalloc.start()
    try:
        count = sum(len(p) for p in cam)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a 64 MiB file"


@pytest.mark.parametrize("late", [10**12, 2**62])
def test_a_far_future_timestamp_is_a_skipped_gap_not_materialised_windows(late):
    import tracemalloc

    ev = _random_events(2000, 100_000)
    ev["t"][1500:] += late
    cam = ReplayCamera(ev, SIZE, speed=1e9, packet_us=1000, max_gap_us=50_000)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="longer than max_gap_us"):
        packets = list(cam)
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = np.concatenate(packets)
    assert len(out) == 2000 and peak < 4 << 20 and took < 5
    before, after = cam.skipped_gaps[0]
    assert after - before > late - 100_000
    # the gap is shortened to max_gap_us; everything else is the recording's
    assert np.array_equal(out["t"][:1500], ev["t"][:1500])
    assert int(out["t"][1500] - out["t"][1499]) == 50_000
    assert np.array_equal(np.diff(out["t"][1500:]), np.diff(ev["t"][1500:]))
    span = int(out["t"][-1] - out["t"][0])
    assert len(packets) == span // 1000 + 1
    # without the limit the gap is replayed as it is: lazily, windows are never built at once
    gen = iter(ReplayCamera(ev, SIZE, speed=None, packet_us=1000, max_gap_us=None))
    assert sum(len(next(gen)) for _ in range(200)) >= 1500
