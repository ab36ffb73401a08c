"""UDP source and sink over real loopback sockets: round trips, both formats, and garbage."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from spikestream import make_events
from spikestream.devices import UDPSink, UDPSource
from spikestream.devices.udp import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    decode_aestream,
    encode_aestream,
    encode_spikestream,
)

SIZE = (128, 128, 2)


def _events(n: int, seed: int = 0, t0: int = 5_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = t0 + np.sort(rng.integers(0, 1_000_000, n))
    return make_events(rng.integers(0, 128, n), rng.integers(0, 128, n), t, rng.integers(0, 2, n))


def _receive(src: UDPSource, until_events: int | None = None) -> np.ndarray:
    parts = []
    got = 0
    for p in src:
        if len(p):
            parts.append(p)
            got += len(p)
        if until_events is not None and got >= until_events:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=_events(0).dtype)


def test_round_trip_spikestream_format_ends_on_end():
    ev = _events(5000)
    with UDPSource(sensor_size=SIZE, idle_timeout_s=2.0) as src:
        host, port = src.address
        assert host == "127.0.0.1"  # loopback unless told otherwise
        with UDPSink(host, port, SIZE) as sink:
            for chunk in np.array_split(ev, 7):
                sink.send(chunk)
        per = sink.events_per_datagram
        assert sink.datagrams == sum(-(-len(c) // per) for c in np.array_split(ev, 7)) + 1
        got = _receive(src)
        assert src.ended
    assert np.array_equal(got, ev)
    c = src.counters
    assert c.events == 5000 and c.malformed == 0 and c.drops == 0


def test_datagrams_fit_the_mtu_and_the_header_is_as_documented():
    ev = _events(1000)
    assert UDPSink("127.0.0.1", 9, SIZE).events_per_datagram == (1472 - 28) // 8 == 180
    data = encode_spikestream(ev[:180], SIZE, seq=42)
    assert len(data) == 28 + 8 * 180 <= 1472
    magic, version, flags, hlen, seq, count, w, h, t0 = struct.unpack_from("<4sBBHIIHHq", data)
    assert (magic, version, flags, hlen, seq, count, w, h) == (b"SPKS", 1, 0, 28, 42, 180, 128, 128)
    assert t0 == ev["t"][0]
    dt, x, yp = struct.unpack_from("<IHH", data, 28 + 8 * 5)
    assert (t0 + dt, x, yp & 0x7FFF, yp >> 15) == tuple(int(ev[5][k]) for k in ("t", "x", "y", "p"))


def test_garbage_is_counted_never_raised():
    good = _events(300, seed=1)
    later = _events(200, seed=2, t0=2_000_000)
    h = HEADER.pack(MAGIC, 1, 0, HEADER_SIZE, 0, 0, 128, 128, 0)
    out_of_sensor = good[:10].copy()
    out_of_sensor["x"][4] = 200
    backwards = good[:10].copy()
    backwards["t"][5] = backwards["t"][0] - 100
    rng = np.random.default_rng(0)
    garbage = [
        (b"", "short"),
        (b"\x00" * 7, "short"),
        (rng.bytes(500), "magic"),
        (b"XXXX" + h[4:], "magic"),
        (h[:4] + b"\x09" + h[5:], "version"),
        (h[:5] + b"\x80" + h[6:], "flags"),
        (h[:6] + struct.pack("<H", 30) + h[8:], "header_length"),
        (encode_spikestream(good[:10], SIZE, 0)[:-3], "length"),
        (encode_spikestream(good[:10], (64, 64, 2), 0), "sensor"),
        (encode_spikestream(out_of_sensor, SIZE, 0), "coordinates"),
    ]
    with UDPSource(sensor_size=SIZE, idle_timeout_s=1.0) as src:
        _, port = src.address
        sink = UDPSink("127.0.0.1", port, SIZE)
        sink.send(later)  # sequence 0, 1: time runs to ~3 s
        for data, _ in garbage:
            sink.send_raw(data)
        # in order of sequence, but earlier in time than what was delivered: refused
        sink.send_raw(encode_spikestream(good[:10], SIZE, sink.seq))
        sink.seq += 1
        raw = bytearray(encode_spikestream(backwards, SIZE, sink.seq))
        sink.send_raw(bytes(raw))  # a datagram whose own records go back in time
        sink.seq += 1
        tail = _events(50, seed=3, t0=4_000_000)
        sink.send(tail)
        sink.close()
        got = _receive(src)
    assert np.array_equal(got, np.concatenate([later, tail]))
    c = src.counters
    want = {}
    for _, reason in garbage:
        want[reason] = want.get(reason, 0) + 1
    want["time_order"] = 2
    assert c.reasons == want
    assert c.malformed == len(garbage) + 2
    assert c.events == 250 and c.drops == 0


def test_lost_datagrams_are_counted_from_sequence_gaps():
    ev = _events(40)
    with UDPSource(sensor_size=SIZE, idle_timeout_s=1.0) as src:
        _, port = src.address
        sink = UDPSink("127.0.0.1", port, SIZE)
        for k, seq in enumerate([0, 1, 4, 5, 9]):  # 2, 3, 6, 7, 8 never arrive
            sink.send_raw(encode_spikestream(ev[8 * k : 8 * k + 8], SIZE, seq))
        sink.send_raw(encode_spikestream(ev[:1], SIZE, 3))  # late and stale: refused
        sink.seq = 10
        sink.close()
        got = _receive(src)
    assert len(got) == 40
    assert src.counters.drops == 5
    assert src.counters.reasons == {"stale_sequence": 1}


def test_aestream_words_with_timestamps_round_trip():
    ev = _events(700)
    with UDPSource(sensor_size=SIZE, format="aestream", idle_timeout_s=0.5) as src:
        _, port = src.address
        with UDPSink("127.0.0.1", port, SIZE, format="aestream", timestamps=True) as sink:
            sink.send(ev)
            assert sink.max_datagram == 512 and sink.events_per_datagram == 64
        got = _receive(src, until_events=700)
    assert np.array_equal(got, ev)


def test_aestream_words_without_timestamps_get_arrival_times():
    ev = _events(300)
    with UDPSource(sensor_size=SIZE, format="aestream", idle_timeout_s=0.5) as src:
        _, port = src.address

        def send() -> None:
            with UDPSink("127.0.0.1", port, SIZE, format="aestream", timestamps=False) as sink:
                sink.send(ev[:150])
                time.sleep(0.1)
                sink.send(ev[150:])

        sender = threading.Thread(target=send)
        sender.start()
        got = _receive(src, until_events=300)
        sender.join()
    for k in ("x", "y", "p"):
        assert np.array_equal(got[k], ev[k])
    assert np.all(np.diff(got["t"]) >= 0)
    assert got["t"][-1] - got["t"][0] >= 80_000  # the 100 ms pause shows in arrival times


def test_aestream_bit_layout_matches_aestream_and_spif():
    # aestream's own UDP test sends b"\x0F\x00\xDA\x00" and expects the pixel x=218, y=15
    ev, stamps = decode_aestream(b"\x0f\x00\xda\x80", (256, 128, 2))
    assert stamps is None and (int(ev["x"][0]), int(ev["y"][0]), int(ev["p"][0])) == (218, 15, 0)
    # spif: bit 31 no-timestamp, x in 30..16, polarity in 15, y in 14..0
    word = struct.unpack("<I", encode_aestream(make_events([300], [17], [0], [1])))[0]
    assert word == (1 << 31) | (300 << 16) | (1 << 15) | 17


def test_aestream_receiver_that_ignores_the_timestamp_bit():
    """aestream's receiver reads every word as an event; `timestamps=False` does the same."""
    with UDPSource(
        sensor_size=(256, 128, 2), format="aestream", timestamps=False, idle_timeout_s=0.5
    ) as src:
        _, port = src.address
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"\x0f\x00\xda\x00", ("127.0.0.1", port))
        s.close()
        got = _receive(src, until_events=1)
    assert (int(got["x"][0]), int(got["y"][0])) == (218, 15)
    with UDPSource(sensor_size=(256, 128, 2), format="aestream", idle_timeout_s=0.3) as src:
        _, port = src.address
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"\x0f\x00\xda\x00", ("127.0.0.1", port))  # bit 31 clear: a timestamp must follow
        s.sendto(b"\x0f\x00\xda\x80\x01", ("127.0.0.1", port))
        s.close()
        assert len(_receive(src)) == 0
    assert src.counters.reasons == {"length": 2}


def test_idle_source_yields_empty_packets_and_stop_ends_it():
    with UDPSource(sensor_size=SIZE, poll_s=0.02) as src:
        threading.Timer(0.2, src.stop).start()
        t0 = time.perf_counter()
        packets = list(src)
        took = time.perf_counter() - t0
    assert 0.15 < took < 2.0
    assert len(packets) >= 3 and all(len(p) == 0 for p in packets)


def test_bad_arguments():
    with pytest.raises(ValueError):
        UDPSource(format="csv")
    with pytest.raises(ValueError):
        UDPSink("127.0.0.1", 0)
    with pytest.raises(ValueError):
        UDPSink("127.0.0.1", 9, format="aestream", max_datagram=4)


def test_aestream_timestamps_unwrap_at_32_bits():
    top = (1 << 32) - 300
    first = make_events([1, 2, 3], [1, 1, 1], [top, top + 100, top + 200], [1, 0, 1])
    across = make_events([4, 5], [2, 2], [top + 250, (1 << 32) + 50], [0, 1])  # wraps inside
    after = make_events([6], [3], [(1 << 32) + 400], [1])  # next datagram after the wrap
    with UDPSource(sensor_size=SIZE, format="aestream", idle_timeout_s=0.3) as src:
        _, port = src.address
        sink = UDPSink("127.0.0.1", port, SIZE, format="aestream", timestamps=True)
        for ev in (first, across, after):
            sink.send_raw(encode_aestream(ev, timestamps=True))
        got = _receive(src, until_events=6)
    assert got["t"].tolist() == [
        top,
        top + 100,
        top + 200,
        top + 250,
        (1 << 32) + 50,
        (1 << 32) + 400,
    ]
    assert src.counters.malformed == 0
