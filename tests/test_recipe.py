"""Input recipes and checkpoints: streams of a recording bin exactly as training binned a
sample, the shipped recipes hold what their training data says, checkpoints resolve by name,
path or folder and are checked before a model is built, and the dataset registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spikestream.datasets import NMNIST, read_events
from spikestream.datasets.registry import create_dataset, dataset_names
from spikestream.pipeline import create_model, load_checkpoint, load_for_inference
from spikestream.pipeline.binning import to_frames
from spikestream.pipeline.checkpoint import (
    WEIGHTS_DIR,
    CheckpointError,
    resolve_checkpoint,
    save_checkpoint,
)
from spikestream.pipeline.recipe import InputRecipe
from spikestream.pipeline.streaming import Sink, StreamPolicy, run_stream, stream_binner


@pytest.fixture()
def nmnist_root(real_data: Path) -> Path:
    root = real_data / "nmnist-small" / "train"
    if not (root / "labels.txt").is_file():
        pytest.skip(f"{root} not found")
    return root


def _stream_frames(recipe: InputRecipe, events: np.ndarray, sensor, packet: int = 97):
    binning = recipe.binning_for(events)
    binner = stream_binner(recipe, binning, sensor)
    frames = []
    for i in range(0, len(events), packet):
        frames += binner.push(events[i:i + packet])
    frames += binner.flush()
    return binning, np.stack(frames[:binning.max_steps])


@pytest.mark.parametrize("mode", ["n_time_bins", "n_event_bins"])
def test_a_streamed_recording_gets_exactly_the_training_frames(nmnist_root: Path,
                                                               mode: str) -> None:
    recipe = InputRecipe((34, 34, 2), (32, 32), mode, 8)
    for name in ("1.bs2", "2.bs2", "77.bs2"):
        rec = read_events(nmnist_root / name)
        binning, frames = _stream_frames(recipe, rec.events, rec.sensor_size)
        want = to_frames(rec.events, rec.sensor_size, **recipe.frame_params())
        assert binning.per_sample and len(frames) == len(want) == 8
        np.testing.assert_array_equal(frames, want)


def test_long_recordings_and_fixed_windows_bin_as_live_streams() -> None:
    recipe = InputRecipe((34, 34, 2), (32, 32), "n_time_bins", 8, live_time_window_us=38_000,
                         sample_span_us=300_000)
    assert recipe.recording_binning(0, 300_000, 5000).per_sample
    live = recipe.recording_binning(0, 10_000_000, 5000)
    assert not live.per_sample and live.time_window == 38_000 and live.max_steps is None
    fixed = InputRecipe((128, 128, 2), (32, 32), "time_window", 100_000)
    assert fixed.recording_binning(0, 300_000, 10).time_window == 100_000
    with pytest.raises(ValueError, match="live_event_count"):
        InputRecipe((128, 128, 2), (32, 32), "n_event_bins", 16).live_binning()


def test_shipped_nmnist_recipe_holds_its_training_sets_mean_bin(nmnist_root: Path) -> None:
    ck = load_for_inference("nmnist")
    r = ck.recipe
    assert (r.mode, r.value, r.sensor_size, r.frame_size) == ("n_time_bins", 8, (34, 34, 2),
                                                             (32, 32))
    assert r.filters == ("crop_to_sensor",)
    opts = ck.extra["meta"]["dataset_options"]
    train = NMNIST(nmnist_root, train=True, test_fraction=opts["val_fraction"],
                   seed=opts["split_seed"])
    spans = [int(ev["t"][-1]) - int(ev["t"][0]) for ev in (train.load(i)
                                                           for i in range(len(train)))]
    assert r.live_time_window_us == round(np.mean([s // 8 for s in spans]))
    assert 30_000 < r.live_time_window_us < 45_000  # ~300 ms samples in 8 bins, not 10 ms
    assert r.sample_span_us == round(np.mean(spans))
    g = load_for_inference("gestures").recipe
    assert (g.mode, g.value, g.sensor_size) == ("time_window", 100_000, (128, 128, 2))


def test_checkpoints_resolve_by_name_path_and_training_folder(tmp_path: Path) -> None:
    model, extra = load_checkpoint("nmnist")
    assert model.num_classes == 10 and extra["meta"]["dataset"] == "nmnist"
    run = tmp_path / "run"
    shutil.copy(WEIGHTS_DIR / "nmnist.pt", run.mkdir() or run / "best.pt")
    shutil.copy(WEIGHTS_DIR / "nmnist.json", run / "best.json")
    assert resolve_checkpoint(run) == run / "best.pt"
    again, _ = load_checkpoint(run)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="shipped"):
        resolve_checkpoint("no-such-weights")
    with pytest.raises(FileNotFoundError, match="best.pt"):
        resolve_checkpoint(tmp_path)


def test_recipe_round_trips_and_old_checkpoints_get_one_derived(tmp_path: Path) -> None:
    model = create_model("tiny", input_size=(32, 32), num_classes=4, embed_dim=16, heads=2)
    recipe = InputRecipe((64, 48, 2), (32, 32), "n_event_bins", 6, live_event_count=300)
    save_checkpoint(tmp_path / "a.pt", model, {"meta": {}}, recipe)
    assert load_for_inference(tmp_path / "a.pt").recipe == recipe
    save_checkpoint(tmp_path / "old.pt", model, {"meta": {
        "sensor_size": [128, 128, 2], "binning": {"time_window": 50_000, "frame_size": [32, 32]},
        "frame_params": {"time_window": 50_000, "start_time": 0, "end_time": 1_000_000}}})
    old = load_for_inference(tmp_path / "old.pt").recipe
    assert (old.mode, old.value, old.sensor_size, old.frame_size) == (
        "time_window", 50_000, (128, 128, 2), (32, 32))
    assert (old.start_time, old.end_time) == (0, 1_000_000)


@pytest.mark.parametrize("change, match", [
    ({"config": None}, "must be an object"),
    ({"config": {"depth": 100000}}, "depth"),
    ({"config": {"embed_dim": 1e6}}, "embed_dim"),
    ({"config": {"input_size": [10**6, 32]}}, "input_size"),
])
def test_forged_configs_are_refused_before_anything_is_built(tmp_path: Path, change,
                                                             match) -> None:
    meta = json.loads((WEIGHTS_DIR / "nmnist.json").read_text())
    if change["config"] is None:
        meta["config"] = None
    else:
        meta["config"].update(change["config"])
    shutil.copy(WEIGHTS_DIR / "nmnist.pt", tmp_path / "x.pt")
    (tmp_path / "x.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "x.pt")


def test_weights_that_do_not_fit_or_are_not_weights_are_refused(tmp_path: Path) -> None:
    meta = json.loads((WEIGHTS_DIR / "nmnist.json").read_text())
    meta["config"]["embed_dim"] = 32
    shutil.copy(WEIGHTS_DIR / "nmnist.pt", tmp_path / "x.pt")
    (tmp_path / "x.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"not a zip, not a pickle")
    shutil.copy(WEIGHTS_DIR / "nmnist.json", tmp_path / "y.json")
    with pytest.raises(CheckpointError, match="not loadable"):
        load_checkpoint(tmp_path / "y.pt")


def test_run_stream_sets_one_thread_for_the_run_and_restores_them() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        ev = np.zeros(50, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
        ev["t"] = np.arange(50) * 1000
        model = create_model("tiny", input_size=(32, 32), num_classes=3, embed_dim=16, heads=2)
        recipe = InputRecipe((32, 32, 2), (32, 32), "time_window", 10_000)
        result = run_stream([ev], model, recipe,
                            sinks=[Sink(on_step=lambda i: seen.append(torch.get_num_threads()))])
        assert result.steps == 5 and set(seen) == {1}
        assert torch.get_num_threads() == 2
        run_stream([ev], model, recipe, policy=StreamPolicy(threads=None),
                   sinks=[Sink(on_step=lambda i: seen.append(torch.get_num_threads()))])
        assert seen[-1] == 2
    finally:
        torch.set_num_threads(before)


def test_registry_builds_every_part(nmnist_root: Path) -> None:
    assert {"nmnist", "dvsgesture", "ncaltech101", "synthetic"} <= set(dataset_names())
    train = create_dataset("nmnist", nmnist_root, part="train", val_fraction=0.2)
    test = create_dataset("nmnist", nmnist_root, part="test", val_fraction=0.2)
    every = create_dataset("nmnist", nmnist_root, part="all", val_fraction=0.2)
    assert len(train) + len(test) == len(every) == 1000
    assert not set(train.files) & set(test.files)
    assert sorted(every.files) == sorted(set(train.files) | set(test.files))
    np.testing.assert_array_equal(every.load(len(train)), test.load(0))
    with pytest.raises(ValueError, match="root"):
        create_dataset("nmnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        create_dataset("mnist", nmnist_root)
    synth = create_dataset("synthetic", part="test", samples_per_class=4, num_classes=10)
    assert len(synth) == 100 and synth.classes[-1] == "Air guitar"


def test_model_info_takes_a_shipped_name_and_bins_by_its_recipe(nmnist_root: Path,
                                                                capsys) -> None:
    from spikestream.cli import main

    assert main(["model-info", "--checkpoint", "nmnist", "--input",
                 str(nmnist_root / "1.bs2"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert "8 bins by the recipe" in obj["input_description"]
    assert obj["energy_uj_per_sample"] == pytest.approx(8 * obj["energy_uj_per_step"])
    assert obj["parameters"] == sum(p.numel() for p in load_checkpoint("nmnist")[0].parameters())
