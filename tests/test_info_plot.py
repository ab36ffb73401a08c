"""`spikestream info` over several files and `--plot`: the summary behind the figure checked
against direct computation, for any split of the stream into packets."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from spikestream import Recording, make_events
from spikestream.cli import main
from spikestream.datasets import write_events
from spikestream.devices.event_plots import EventSummary

W, H = 24, 16


def events(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 400_000, n))
    t[n // 2:] += 10**10  # a gap of hours costs nothing
    return make_events(rng.integers(0, W, n), rng.integers(0, H, n), t, rng.integers(0, 2, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_equals_direct_computation_for_any_split(seed: int) -> None:
    ev = events(3_000, seed)
    rng = np.random.default_rng(seed + 10)
    cuts = np.sort(rng.integers(0, len(ev), 12))
    s = EventSummary((W, H, 2), bin_us=10_000, surface_us=50_000)
    for part in np.split(ev, cuts):
        s.add(part)
    ref = np.zeros((H, W), int)
    np.add.at(ref, (ev["y"], ev["x"]), 1)
    np.testing.assert_array_equal(s.counts, ref)
    t, rate = s.rate()
    b = (ev["t"] - ev["t"][0]) // 10_000
    keys = np.unique(b)
    assert len(t) == len(keys) <= len(ev)  # only bins that hold events
    np.testing.assert_allclose(t, keys * 0.01)
    for p in (0, 1):
        direct = np.array([np.sum((b == k) & (ev["p"] == p)) for k in keys]) / 0.01
        np.testing.assert_allclose(rate[:, p], direct)
    surf = s.time_surface()
    end = ev["t"][-1]
    want = np.zeros((H, W))
    for e in ev:  # time order: the latest event of a pixel is written last
        if e["t"] > end - 50_000:
            want[e["y"], e["x"]] = (1 - (end - e["t"]) / 50_000) * (1 if e["p"] else -1)
    np.testing.assert_allclose(surf, want)


def test_info_several_files_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i in range(2):
        p = tmp_path / f"r{i}.h5"
        write_events(p, Recording(events(500 + 100 * i, i), (W, H, 2)))
        paths.append(str(p))
    out = tmp_path / "summary.png"
    assert main(["info", *paths, "--json", "--plot", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    got = [json.loads(line) for line in lines]
    assert [g["path"] for g in got] == paths and [g["events"] for g in got] == [500, 600]
    img = iio.imread(out)
    assert img.ndim == 3 and img.shape[0] > img.shape[1] / 3  # two rows of three panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0.h5", "r1.h5", "summary.png"]
