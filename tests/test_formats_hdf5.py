"""HDF5: our layout (write/read, Recorder, a writer killed with SIGKILL), DSEC's layout."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from spikestream import EVENT_DTYPE, EventFormatError, Recording, make_events
from spikestream.datasets import Recorder, detect_format, iter_events, read_events, write_events


def _events(n: int, seed: int = 0, w: int = 346, h: int = 260) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n),
                       np.sort(rng.integers(0, 10**7, n)), rng.integers(0, 2, n))


def test_write_read_roundtrip(tmp_path: Path) -> None:
    ev = _events(100_000)
    path = tmp_path / "r.h5"
    write_events(path, Recording(ev, (346, 260, 2), {"camera": "DAVIS346", "lux": 120.5}))
    assert detect_format(path) == "hdf5"
    rec = read_events(path)
    np.testing.assert_array_equal(rec.events, ev)
    assert rec.sensor_size == (346, 260, 2)
    assert rec.metadata["camera"] == "DAVIS346" and rec.metadata["lux"] == 120.5
    with h5py.File(path) as f:  # chunked, compressed, appendable
        ds = f["events"]
        assert ds.chunks is not None and ds.compression == "gzip" and ds.maxshape == (None,)
    packets = list(iter_events(path, chunk_events=30_000))
    assert [len(p) for p in packets] == [30_000, 30_000, 30_000, 10_000]


def test_recorder_appends_packets(tmp_path: Path) -> None:
    ev = _events(10_000, seed=1, w=128, h=128)
    path = tmp_path / "live.h5"
    with Recorder(path, (128, 128), metadata={"source": "test"}, flush_every=1000) as rec:
        for i in range(0, len(ev), 777):
            rec.append(ev[i:i + 777])
        with pytest.raises(ValueError, match="goes back"):
            rec.append(ev[:5])
        with pytest.raises(ValueError, match="outside"):
            rec.append(make_events([200], [0], [ev["t"][-1]], [1]))
        assert len(rec) == len(ev)
    out = read_events(path)
    np.testing.assert_array_equal(out.events, ev)
    assert out.sensor_size == (128, 128, 2) and out.metadata["source"] == "test"


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from spikestream import make_events
    from spikestream.datasets import Recorder
    path = sys.argv[1]
    with Recorder(path, (64, 48), flush_every=0) as rec:
        t = 0
        for k in range(10**6):
            n = 4000
            i = np.arange(n)
            ev = make_events(i % 64, i % 48, t + i, np.full(n, k % 2))
            t += n
            rec.append(ev)
            if k % 2 == 1:
                rec.flush()
                print(len(rec), flush=True)
            time.sleep(0.002)
""")


def test_killed_writer_leaves_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "crash.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        flushed = [int(proc.stdout.readline()) for _ in range(6)]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    rec = read_events(path)
    assert rec.metadata.get("recovered_after_crash") is True
    n = len(rec)
    assert n >= flushed[-1] and n % 8000 == 0  # every flush commits whole pairs of packets
    np.testing.assert_array_equal(rec.events["t"], np.arange(n))
    np.testing.assert_array_equal(rec.events["x"], np.arange(n) % 4000 % 64)
    assert rec.sensor_size == (64, 48, 2)


def _write_dsec(path: Path, ev: np.ndarray, t_offset: int, ms_to_idx: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        g.create_dataset("x", data=ev["x"])
        g.create_dataset("y", data=ev["y"])
        g.create_dataset("t", data=(ev["t"] - t_offset).astype(np.uint32))
        g.create_dataset("p", data=ev["p"])
        f.create_dataset("t_offset", data=np.int64(t_offset))
        f.create_dataset("ms_to_idx", data=ms_to_idx)


def test_dsec_layout(tmp_path: Path) -> None:
    t_offset = 49_599_300_523
    ev = _events(20_000, seed=2, w=640, h=480)
    ev["t"] = ev["t"] // 10 + t_offset
    rel = ev["t"] - t_offset
    ms_to_idx = np.searchsorted(rel, np.arange(int(rel[-1]) // 1000 + 1) * 1000).astype(np.uint64)
    path = tmp_path / "events.h5"
    _write_dsec(path, ev, t_offset, ms_to_idx)
    assert detect_format(path) == "dsec"
    rec = read_events(path)
    assert rec.sensor_size == (640, 480, 2)
    np.testing.assert_array_equal(rec.events, ev)
    assert rec.metadata["t_offset_us"] == t_offset
    np.testing.assert_array_equal(np.concatenate(list(iter_events(path, chunk_events=999))), ev)
    bad = ms_to_idx.copy()
    bad[5] += 3  # an index that no longer points at the first event of its millisecond
    _write_dsec(path, ev, t_offset, bad)
    # the seeded fixture has distinct timestamps there, so the shifted index is really wrong
    assert rel[int(ms_to_idx[5])] != rel[int(ms_to_idx[5]) + 3]
    with pytest.raises(EventFormatError, match="ms_to_idx"):
        read_events(path)


def test_lying_and_foreign_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    write_events(path, Recording(_events(100), (346, 260, 2)))
    with h5py.File(path, "r+") as f:
        f["n_committed"][0] = 500  # claims more events than stored
    with pytest.raises(EventFormatError, match="n_committed"):
        read_events(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 2)))
    with pytest.raises(EventFormatError, match="layout"):
        read_events(path)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "spikestream-events"
        f.attrs["sensor_size"] = [10, 10, 2]
        f.create_dataset("events", data=np.zeros(3, dtype=[("a", "<i4")]))
    with pytest.raises(EventFormatError, match="dtype"):
        read_events(path)


def test_events_dtype_is_stored_as_is(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    write_events(path, Recording(_events(10), (346, 260, 2)))
    with h5py.File(path) as f:
        assert f["events"].dtype == EVENT_DTYPE


TIMED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from spikestream import make_events
    from spikestream.datasets import Recorder
    with Recorder(sys.argv[1], (64, 48)) as rec:  # default: flush by time (0.5 s) and size
        t = 0
        while True:
            i = np.arange(100)
            rec.append(make_events(i % 64, i % 48, t + i, i % 2))
            t += 100
            print(len(rec), flush=True)
            time.sleep(0.01)
""")


def test_a_writer_killed_loses_at_most_the_flush_interval(tmp_path: Path) -> None:
    import time

    path = tmp_path / "timed.h5"
    proc = subprocess.Popen([sys.executable, "-c", TIMED_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    seen: list[tuple[float, int]] = []
    try:
        seen.append((time.monotonic(), int(proc.stdout.readline())))  # started
        start = time.monotonic()
        while time.monotonic() - start < 3.0:
            seen.append((time.monotonic(), int(proc.stdout.readline())))
    finally:
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=30)
    rec = read_events(path)
    # every event appended 0.5 s (the interval) + 0.5 s (slack for a busy machine) before the
    # kill is in the file; the old size-only flushing kept none of these 3 s of events
    durable = max(n for at, n in seen if at <= killed - 1.0)
    assert durable >= 1000 and durable <= len(rec) <= seen[-1][1]
    np.testing.assert_array_equal(rec.events["t"], np.arange(len(rec)))


def _dsec_columns(path: Path, **cols: np.ndarray) -> None:
    base = {"x": np.array([1, 2, 3], np.uint16), "y": np.array([1, 2, 3], np.uint16),
            "t": np.array([5, 6, 7], np.int64), "p": np.array([0, 1, 1], np.uint8)}
    base.update({k: v for k, v in cols.items() if k != "t_offset"})
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        for k, v in base.items():
            g.create_dataset(k, data=v)
        if "t_offset" in cols:
            f.create_dataset("t_offset", data=cols["t_offset"])


@pytest.mark.parametrize("cols,message,record", [
    ({"x": np.array([1, 65541, 3], np.uint32)}, "x=65541", 1),
    ({"y": np.array([1, 2, 196610], np.int64)}, "y=196610", 2),
    ({"t": np.array([5, -6, 7], np.int64)}, "t=-6", 1),
    ({"p": np.array([0, 1, 2], np.uint8)}, "p=2", 2),
    ({"t_offset": np.int64(2**63 - 6)}, "t=6 \\(\\+ offset", 1),
    ({"t_offset": np.int64(-1)}, "t_offset=-1", None),
])
def test_dsec_values_out_of_range_name_file_and_index(tmp_path: Path, cols, message, record):
    path = tmp_path / "events.h5"
    _dsec_columns(path, **cols)
    with pytest.raises(EventFormatError, match=message) as e:
        read_events(path)
    assert e.value.record == record and str(path) in str(e.value)


def test_negative_times_and_huge_sensors_in_our_layout_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    ev = _events(10, w=64, h=48)
    ev["t"][3] = -5
    ev["t"][:3] = -10
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "spikestream-events"
        f.attrs["sensor_size"] = [64, 48, 2]
        f.create_dataset("events", data=ev)
    with pytest.raises(EventFormatError, match="t=-10") as e:
        read_events(path)
    assert e.value.record == 0
    with h5py.File(path, "r+") as f:
        f.attrs["sensor_size"] = [99999999999, 99999999999, 2]
    with pytest.raises(EventFormatError, match="sensor size"):
        iter_events(path)
    cli = "import sys; from spikestream.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "info", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "65535" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(EventFormatError, match="sensor size"):
        Recorder(tmp_path / "big.h5", (70000, 10))
