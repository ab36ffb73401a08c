"""The EventSource contract, its counters and pacing, and sources built from text specs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spikestream import EventFormatError, Recording, make_events
from spikestream.devices import (
    EventSource,
    Pacer,
    ReplayCamera,
    SimulatedCamera,
    UDPSource,
    source_from_spec,
    split_packets,
)


class _Listed(EventSource):
    def __init__(self, packets, size=(10, 10, 2)):
        super().__init__(size)
        self.packets = packets
        self.opened = self.closed = 0

    def _open(self):
        self.opened += 1

    def _close(self):
        self.closed += 1

    def _packets(self):
        yield from self.packets


def test_contract_checked_on_every_packet():
    ok = make_events([1, 2], [3, 4], [10, 20], [0, 1])
    src = _Listed([ok, ok[:0], make_events([5], [5], [20], [1])])
    assert sum(len(p) for p in src) == 3
    assert src.counters.events == 3 and src.counters.packets == 3
    assert src.opened == src.closed == 1  # iteration opened and closed it
    with pytest.raises(EventFormatError, match="before the previous"):
        list(_Listed([ok, make_events([1], [1], [5], [0])]))
    with pytest.raises(EventFormatError, match="record 1: timestamp 8 µs goes back from 9"):
        list(_Listed([make_events([1, 1], [1, 1], [9, 8], [0, 0])]))
    with pytest.raises(EventFormatError, match="outside"):
        list(_Listed([make_events([10], [1], [9], [0])]))
    with pytest.raises(EventFormatError, match="packet of"):
        list(_Listed([np.zeros(3)]))


def test_context_manager_keeps_it_open_across_iterations():
    src = _Listed([make_events([1], [1], [1], [1])])
    with src:
        list(src)
        assert src.is_open
    assert src.opened == src.closed == 1
    assert src.counters.as_dict()["events"] == 1


def test_pacer_follows_stream_time():
    p = Pacer(2.0)
    t0 = time.perf_counter()
    for t in range(0, 200_001, 50_000):  # 0.2 s of stream time at twice real time
        p.wait(t)
    assert 0.09 <= time.perf_counter() - t0 < 0.3
    fast = Pacer(None)
    t0 = time.perf_counter()
    fast.wait(0)
    fast.wait(10_000_000)
    assert time.perf_counter() - t0 < 0.05
    with pytest.raises(ValueError):
        Pacer(-1.0)


def test_split_packets():
    ev = make_events(np.zeros(6), np.zeros(6), [0, 5, 9, 10, 31, 31], np.ones(6))
    by_time = list(split_packets(ev, packet_us=10))
    assert [len(p) for _, p in by_time] == [3, 1, 0, 2]
    assert [t for t, _ in by_time] == [10, 20, 30, 40]
    by_count = list(split_packets(ev, packet_events=4))
    assert [len(p) for _, p in by_count] == [4, 2]


def test_sources_from_specs(tmp_path):
    sim = source_from_spec("sim:0,Air guitar", speed=None, sensor_size=(32, 32, 2))
    assert isinstance(sim, SimulatedCamera)
    assert [s[2] for s in sim.segments] == [0, 9]
    udp = source_from_spec("udp:0", sensor_size=(64, 48, 2))
    assert isinstance(udp, UDPSource) and udp.sensor_size == (64, 48, 2)
    assert udp.address[0] == "127.0.0.1" and udp.format == "spikestream"
    udp.close()
    assert source_from_spec("aestream:127.0.0.1:0").format == "aestream"
    rec = Recording(make_events([1], [2], [3], [1]), (8, 8, 2))
    rep = source_from_spec("file:x.h5", read_recording=lambda p: rec, speed=None)
    assert isinstance(rep, ReplayCamera) and rep.sensor_size == (8, 8, 2)
    for bad in ("file:x.h5", "udp:host:port", "webcam", "frames:"):
        with pytest.raises(ValueError):
            source_from_spec(bad)
