"""eval's reports: the data behind the confusion and accuracy-over-time PNGs (row-normalised
cells, the step length in ms where bins are timed, the chance line), and the PNGs written by
`spikestream eval` with the checkpoint and dataset in their titles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikestream.cli import main
from spikestream.pipeline.evaluation import (
    EvalResult,
    TimeAxis,
    accuracy_over_time,
    confusion_rows,
    plot_accuracy_over_time,
    plot_confusion,
    time_axis,
)
from spikestream.pipeline.recipe import InputRecipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result() -> EvalResult:
    cm = [[8, 2, 0], [1, 1, 2], [0, 0, 0]]  # class 2 has no samples
    return EvalResult(accuracy=9 / 14, samples=14, classes=["a", "b", "c"],
                      per_class_accuracy=[0.8, 0.25, float("nan")], confusion=cm,
                      accuracy_per_step=[0.2, 0.5, 9 / 14], step_latency_ms=1.0,
                      latency_samples=1)


def test_confusion_rows_sum_to_one_per_true_class():
    rows = confusion_rows(_result())
    np.testing.assert_allclose(rows[0], [0.8, 0.2, 0.0])
    np.testing.assert_allclose(rows[1], [0.25, 0.25, 0.5])
    assert np.isnan(rows[2]).all()
    np.testing.assert_allclose(np.nansum(rows[:2], 1), 1.0)


def _recipe(mode: str, value: int, **kw) -> InputRecipe:
    return InputRecipe((34, 34, 2), (32, 32), mode, value, **kw)


def test_the_time_axis_is_in_ms_where_bins_are_timed_and_says_which():
    tw = time_axis(_recipe("time_window", 100_000))
    assert tw.bin_ms == 100.0 and "100 ms" in tw.description
    per_sample = time_axis(_recipe("n_time_bins", 8, live_time_window_us=38_300))
    assert per_sample.bin_ms == 38.3 and "live equivalent" in per_sample.description
    assert "8 equal bins" in per_sample.description
    unmeasured = time_axis(_recipe("n_time_bins", 8))
    assert unmeasured.bin_ms is None
    counts = time_axis(_recipe("event_count", 2000))
    assert counts.bin_ms is None and "event count" in counts.description
    x, acc, chance = accuracy_over_time(_result(), per_sample)
    np.testing.assert_allclose(x, [38.3, 76.6, 114.9])
    np.testing.assert_allclose(acc, [0.2, 0.5, 9 / 14])
    assert chance == pytest.approx(1 / 3)
    x, _, _ = accuracy_over_time(_result(), counts)
    np.testing.assert_array_equal(x, [1, 2, 3])


def test_the_plots_are_written(tmp_path: Path):
    res = _result()
    for f in (plot_confusion(res, tmp_path / "cm.png", "ck.pt on bars (test)"),
              plot_accuracy_over_time(res, tmp_path / "t.png", TimeAxis(10.0, "10 ms"),
                                      "ck.pt on bars (test)"),
              plot_accuracy_over_time(res, tmp_path / "steps.png", time_axis(None))):
        assert f.read_bytes()[:8] == PNG_MAGIC


def test_eval_writes_titled_reports_on_real_digits(real_data: Path, tmp_path: Path, capsys,
                                                   monkeypatch):
    import matplotlib.axes

    titles: list[str] = []
    real_set_title = matplotlib.axes.Axes.set_title

    def keep(self, label, *a, **kw):  # the titles the real plotting code sets
        titles.append(label)
        return real_set_title(self, label, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", keep)
    root = real_data / "nmnist-small" / "train"
    rc = main(["eval", "--checkpoint", "nmnist", "--root", str(root), "--limit", "10",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("confusion_png", "accuracy_over_time_png"):
        assert Path(obj[key]).read_bytes()[:8] == PNG_MAGIC
    assert obj["bin_ms"] == pytest.approx(38.3, abs=0.1)  # the shipped recipe's live bin
    assert "live equivalent" in obj["time_axis"]
    assert len(titles) == 2 and all("nmnist.pt on nmnist" in t for t in titles)
