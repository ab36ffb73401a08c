"""InivationCamera through dv-processing's own AEDAT4 reader (the live camera's code path)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from spikestream import make_events, validate_events
from spikestream.devices import InivationCamera, gesture_clip

dv = pytest.importorskip(
    "dv_processing",
    reason="dv-processing not installed (optional extra: pip install 'spikestream[inivation]')",
)


def _write_aedat4(path, events: np.ndarray, size: tuple[int, int], t_offset: int) -> None:
    """Write events with dv-processing's own writer."""
    cfg = dv.io.MonoCameraWriter.EventOnlyConfig("DVXplorer_sim", size)
    writer = dv.io.MonoCameraWriter(str(path), cfg)
    for chunk in np.array_split(events, 5):
        store = dv.EventStore()
        for e in chunk:
            store.push_back(int(e["t"]) + t_offset, int(e["x"]), int(e["y"]), bool(e["p"]))
        writer.writeEvents(store)
    del writer  # flushes and closes the file


def test_recording_written_by_dv_reads_back_exactly(tmp_path):
    ev = gesture_clip(3, duration_s=0.2, sensor_size=(64, 48, 2), seed=1, fps=200)[:3000]
    path = tmp_path / "sim.aedat4"
    offset = 1_700_000_000_000_000  # dv-processing stamps events in µs since the epoch
    _write_aedat4(path, ev, (64, 48), offset)
    cam = InivationCamera(recording=path, zero_time=False)
    assert cam.sensor_size == (64, 48, 2)
    assert cam.camera_name == "DVXplorer_sim"
    with cam:
        got = cam.events()
    assert np.array_equal(got["x"], ev["x"]) and np.array_equal(got["y"], ev["y"])
    assert np.array_equal(got["p"], ev["p"])
    assert np.array_equal(got["t"], ev["t"] + offset)
    assert cam.counters.events == len(ev)
    # zero_time: the stream starts at 0 µs; a second opening reads the file again
    again = InivationCamera(recording=path).events()
    assert np.array_equal(again["t"], ev["t"] - ev["t"][0])


def test_real_dvxplorer_recording(real_data):
    """tonic's sample.aedat4 (iniVation DVXplorer): 111,954 events, 320x240, 49% ON."""
    cam = InivationCamera(recording=real_data / "aedat4" / "sample.aedat4")
    assert cam.sensor_size == (320, 240, 2)
    ev = cam.events()
    validate_events(ev, cam.sensor_size)
    assert len(ev) == 111_954
    assert round(100 * ev["p"].mean()) == 49
    assert ev["t"][0] == 0 and 0.5e6 < ev["t"][-1] < 0.7e6


def test_missing_file_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        InivationCamera(recording=tmp_path / "none.aedat4")
    monkeypatch.setitem(sys.modules, "dv_processing", None)
    with pytest.raises(ImportError, match="spikestream\\[inivation\\]"):
        InivationCamera(recording=tmp_path / "none.aedat4")


def test_events_convert_from_dv_store():
    from spikestream.devices.inivation import dv_events_to_array

    store = dv.EventStore()
    ref = make_events([1, 5], [2, 7], [10, 20], [1, 0])
    for e in ref:
        store.push_back(int(e["t"]), int(e["x"]), int(e["y"]), bool(e["p"]))
    assert np.array_equal(dv_events_to_array(store), ref)
