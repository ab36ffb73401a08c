"""Forged and outlier datagrams: refused, counted, and the stream resynchronises (RTP-style)."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

from spikestream import make_events
from spikestream.devices import UDPSink, UDPSource
from spikestream.devices.resync import SequenceTracker, TimeTracker
from spikestream.devices.udp import PacketError, encode_aestream, encode_spikestream
from spikestream.pipeline.binning import StreamBinner

SIZE = (64, 64, 2)


def _datagrams(n: int, per: int = 20, t0: int = 1_000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = t0 + np.sort(rng.integers(0, 20_000 * n, n * per))
    ev = make_events(rng.integers(0, 64, n * per), rng.integers(0, 64, n * per), t,
                     rng.integers(0, 2, n * per))
    return np.split(ev, n)


def _run(raw: list[bytes]) -> tuple[UDPSource, np.ndarray, StreamBinner, int]:
    binner = StreamBinner(SIZE, time_window=10_000)
    parts = []
    with UDPSource(sensor_size=SIZE, idle_timeout_s=0.5) as src:
        sink = UDPSink("127.0.0.1", src.address[1], SIZE)
        for data in raw:
            sink.send_raw(data)
        tracemalloc.start()
        for p in src:
            if len(p):
                parts.append(p)
                binner.push(p)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sink.close()
    return src, np.concatenate(parts), binner, peak


@pytest.mark.parametrize("base", [300_000_000 * 10_000, (1 << 62) - 1])
def test_a_far_future_base_time_is_refused_and_the_stream_goes_on(base):
    good = _datagrams(30)
    forged = good[10].copy()
    forged["t"] += base - int(forged["t"][0])
    raw = [encode_spikestream(d, SIZE, k) for k, d in enumerate(good[:10])]
    raw.append(encode_spikestream(forged, SIZE, 10))
    raw += [encode_spikestream(d, SIZE, 11 + k) for k, d in enumerate(good[10:])]
    src, got, binner, peak = _run(raw)
    assert np.array_equal(got, np.concatenate(good))
    assert src.counters.reasons == {"time_jump": 1} and src.counters.drops == 0
    span = int(got["t"][-1] - got["t"][0])
    assert binner.frames_out <= span // 10_000 + 1
    assert peak < 16 << 20


def test_a_sequence_number_jumped_by_2_31_is_refused_and_counts_no_drops():
    good = _datagrams(30)
    raw = [encode_spikestream(d, SIZE, k) for k, d in enumerate(good[:10])]
    raw.append(encode_spikestream(good[10][:1], SIZE, 10 + (1 << 31)))
    raw += [encode_spikestream(d, SIZE, 10 + k) for k, d in enumerate(good[10:])]
    src, got, _, _ = _run(raw)
    assert np.array_equal(got, np.concatenate(good))
    assert src.counters.reasons == {"sequence_jump": 1}
    assert src.counters.drops == 0 and src.sequence.resyncs == 0


def test_a_restarted_sender_is_followed_after_three_agreeing_datagrams():
    first, second = _datagrams(10, seed=1), _datagrams(10, t0=5, seed=2)
    raw = [encode_spikestream(d, SIZE, 1000 + k) for k, d in enumerate(first)]
    raw += [encode_spikestream(d, SIZE, k) for k, d in enumerate(second)]  # seq and clock restart
    src, got, _, _ = _run(raw)
    # the first two datagrams of the new sender are on probation and refused; from the third on
    # its events come through, their times moved to continue the stream without going back
    expect = np.concatenate(first + second[2:])
    assert len(got) == len(expect)
    assert np.array_equal(got[["x", "y", "p"]], expect[["x", "y", "p"]])
    assert (np.diff(got["t"]) >= 0).all()
    tail = got["t"][len(np.concatenate(first)):]
    assert np.array_equal(np.diff(tail), np.diff(np.concatenate(second[2:])["t"]))
    assert tail[0] == np.concatenate(first)["t"][-1]
    assert src.sequence.resyncs == 1 and src.time.resyncs == 1
    assert sum(src.counters.reasons.values()) == 2 and src.counters.drops == 0


def test_sequence_tracker_counts_losses_and_refuses_outliers():
    s = SequenceTracker()
    assert [s.arrived(q) for q in (7, 8, 11, 12)] == [0, 0, 2, 0]
    with pytest.raises(PacketError) as e:
        s.arrived(5)  # late
    assert e.value.reason == "stale_sequence"
    for forged in (12 + 3002, 12 + (1 << 31), 0xFFFFFFFF - 200):
        with pytest.raises(PacketError) as e:
            s.arrived(forged)
        assert e.value.reason == "sequence_jump"
    assert s.arrived(13) == 0  # the stream was not moved by any of them
    assert s.arrived(0xFFFFFFFF & (13 + 3001)) == 3000  # the largest loss still counted
    s2 = SequenceTracker()
    s2.arrived(0xFFFFFFFF)
    assert s2.arrived(1) == 1  # wraps around 2^32


def test_time_tracker_allows_pauses_in_proportion_to_wall_time():
    tt = TimeTracker(max_jump_us=1000)
    assert tt.accept(0, 10) == 0
    assert tt.accept(900, 950) == 0
    with pytest.raises(PacketError) as e:
        tt.accept(950 + 10_000_000, 950 + 10_000_000)
    assert e.value.reason == "time_jump"
    with pytest.raises(PacketError) as e:
        tt.accept(100, 200)
    assert e.value.reason == "time_order"
    assert tt.accept(960, 970) == 0


@pytest.mark.parametrize("base", [300_000_000 * 10_000, (1 << 62) - 1])
def test_a_forged_far_future_first_datagram_is_refused(base):
    """Probation from the very first datagram: the forged one arrives first (sequence 0), the
    genuine ones follow; none of the stream's times comes from the forged one."""
    good = _datagrams(30)
    forged = good[0][:5].copy()
    forged["t"] += base - int(forged["t"][0])
    raw = [encode_spikestream(forged, SIZE, 0)]
    raw += [encode_spikestream(d, SIZE, 1 + k) for k, d in enumerate(good)]
    src, got, binner, peak = _run(raw)
    assert np.array_equal(got, np.concatenate(good))
    assert src.counters.malformed == 1 and src.counters.drops == 0
    assert sum(src.counters.reasons.values()) == 1
    assert src.time.resyncs == 0 and src.sequence.resyncs == 0
    span = int(got["t"][-1] - got["t"][0])
    assert binner.frames_out <= span // 10_000 + 1
    assert peak < 16 << 20


def test_a_forged_second_datagram_costs_no_genuine_one():
    good = _datagrams(10)
    forged = good[1][:3].copy()
    forged["t"] += 10**12
    raw = [encode_spikestream(good[0], SIZE, 0), encode_spikestream(forged, SIZE, 1 << 30)]
    raw += [encode_spikestream(d, SIZE, 1 + k) for k, d in enumerate(good[1:])]
    src, got, _, _ = _run(raw)
    assert np.array_equal(got, np.concatenate(good))
    assert src.counters.reasons == {"sequence_jump": 1} and src.counters.drops == 0


def test_a_stream_shorter_than_the_probation_is_delivered_when_it_ends():
    good = _datagrams(2)
    src, got, _, _ = _run([encode_spikestream(d, SIZE, k) for k, d in enumerate(good)])
    assert np.array_equal(got, np.concatenate(good)) and src.counters.malformed == 0
    # one datagram and END, no idle timeout: the END ends it at once, the datagram delivered
    with UDPSource(sensor_size=SIZE) as src:
        guard = threading.Timer(10, src.stop)
        guard.start()
        t0 = time.perf_counter()
        with UDPSink("127.0.0.1", src.address[1], SIZE) as sink:
            sink.send(good[0])
        got = np.concatenate([p for p in src if len(p)])
        guard.cancel()
    assert src.ended and time.perf_counter() - t0 < 5
    assert np.array_equal(got, good[0])


def test_datagrams_refused_for_their_content_on_probation_count_as_arrived():
    good = _datagrams(6)
    bad = good[1].copy()
    bad["x"][0] = 500  # outside the sensor: refused for its content, but it did arrive
    raw = [encode_spikestream(good[0], SIZE, 0), encode_spikestream(bad, (1024, 1024, 2), 1)]
    raw += [encode_spikestream(d, SIZE, 2 + k) for k, d in enumerate(good[2:])]
    src, got, _, _ = _run(raw)
    assert np.array_equal(got, np.concatenate([good[0], *good[2:]]))
    assert src.counters.reasons == {"sensor": 1} and src.counters.drops == 0


def _aestream_run(datagrams: list[np.ndarray]) -> tuple[UDPSource, np.ndarray]:
    parts = []
    with UDPSource(sensor_size=SIZE, format="aestream", idle_timeout_s=0.5) as src:
        sink = UDPSink("127.0.0.1", src.address[1], SIZE, format="aestream", timestamps=True)
        for d in datagrams:
            sink.send_raw(encode_aestream(d, timestamps=True))
        parts = [p for p in src if len(p)]
        sink.close()
    return src, np.concatenate(parts)


def test_aestream_sender_restart_with_a_small_backward_step_resynchronises():
    """The sender restarts its clock 1 s back: its datagrams are refused until three agree,
    then the stream goes on from them (times shifted to continue), instead of refusing the
    restarted sender forever."""
    first = _datagrams(10, t0=5_000_000, seed=4)
    second = _datagrams(10, t0=4_000_000, seed=5)
    src, got = _aestream_run(first + second)
    expect = np.concatenate(first + second[2:])
    assert np.array_equal(got[["x", "y", "p"]], expect[["x", "y", "p"]])
    n1 = len(np.concatenate(first))
    assert np.array_equal(got[:n1], np.concatenate(first))
    tail = got["t"][n1:]
    assert tail[0] == got["t"][n1 - 1]
    assert np.array_equal(np.diff(tail), np.diff(np.concatenate(second[2:])["t"]))
    assert src.counters.reasons == {"time_order": 2} and src.time.resyncs == 1


def test_aestream_unwrap_ignores_a_refused_datagram():
    """A forged datagram 3e9 µs ahead (inside the 32-bit range) is refused, and the genuine
    datagrams after it keep their times: the unwrap does not follow the refused one."""
    good = _datagrams(12, t0=1_000, seed=6)
    forged = good[6][:4].copy()
    forged["t"] = int(good[5]["t"][-1]) + 3_000_000_000 + np.arange(4)
    src, got = _aestream_run(good[:6] + [forged] + good[6:])
    assert np.array_equal(got, np.concatenate(good))
    assert src.counters.reasons == {"time_jump": 1} and src.time.resyncs == 0
