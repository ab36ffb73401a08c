"""Evaluation: stepwise scores against a whole-sequence computation, the PNGs, the CLI end to
end on real N-MNIST samples (train -> eval --json), and the shipped weights by name."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikestream.cli import main
from spikestream.datasets import NMNIST
from spikestream.pipeline import load_for_inference
from spikestream.pipeline.checkpoint import WEIGHTS_DIR, load_checkpoint, resolve_checkpoint
from spikestream.pipeline.evaluation import evaluate, plot_accuracy_over_time, plot_confusion

sys.path.insert(0, str(Path(__file__).parent))
from test_training import Bars, tiny_model  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_stepwise_scores_match_forward(tmp_path: Path) -> None:
    model = tiny_model(seed=4).eval()
    ds = Bars(24, 5)
    res = evaluate(model, ds, classes=["left", "right"], batch_size=7, progress=False,
                   latency_samples=2)
    with torch.no_grad():
        logits = model(ds.x.transpose(0, 1))  # whole sequence, [T, B, C]
    running = logits.cumsum(0).argmax(-1)  # argmax of the running mean == of the running sum
    want_t = (running == ds.y[None]).float().mean(1).numpy()
    np.testing.assert_allclose(res.accuracy_per_step, want_t)
    assert res.accuracy == pytest.approx(want_t[-1]) and res.samples == 24
    cm = np.zeros((2, 2), int)
    np.add.at(cm, (ds.y.numpy(), running[-1].numpy()), 1)
    assert res.confusion == cm.tolist()
    for c in range(2):
        assert res.per_class_accuracy[c] == pytest.approx(cm[c, c] / cm[c].sum())
    assert res.step_latency_ms > 0 and res.latency_samples == 2 and res.mode == "step"
    obj = res.to_json()
    assert {"accuracy", "samples", "per_class_accuracy", "step_latency_ms"} <= set(obj)
    for f in (plot_confusion(res, tmp_path / "cm.png"),
              plot_accuracy_over_time(res, tmp_path / "t.png", bin_ms=10)):
        assert f.read_bytes()[:8] == PNG_MAGIC


def test_resolve_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shipped"):
        resolve_checkpoint("no-such-weights")
    (tmp_path / "best.pt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == tmp_path / "best.pt"


@pytest.fixture()
def few_nmnist(real_data: Path, tmp_path: Path) -> Path:
    src = real_data / "nmnist-small" / "train"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    dst = tmp_path / "nmnist"
    dst.mkdir()
    lines = (src / "labels.txt").read_text().splitlines()[:41]
    (dst / "labels.txt").write_text("\n".join(lines) + "\n")
    for ln in lines[1:]:
        shutil.copy(src / f"{ln.split()[0]}.bs2", dst)
    return dst


def test_cli_train_then_eval_json(few_nmnist: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "nmnist", "--root", str(few_nmnist), "--config", "tiny",
               "--attention", "ssa", "--epochs", "1", "--out", str(out), "--batch-size", "8",
               "--embed-dim", "16", "--heads", "2", "--time-bins", "4",
               "--cache", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out / "best.pt").is_file() and summary["best_epoch"] == 1
    model, extra = load_checkpoint(out / "best.pt")
    meta = extra["meta"]
    assert meta["binning"] == {"n_time_bins": 4, "frame_size": [32, 32]}
    assert meta["dataset"] == "nmnist" and meta["classes"] == [str(d) for d in range(10)]
    assert model.time_steps == 4 and model.num_classes == 10
    recipe = load_for_inference(out).recipe  # the training folder names the checkpoint
    assert (recipe.mode, recipe.value, recipe.frame_size) == ("n_time_bins", 4, (32, 32))
    assert recipe.sensor_size == (34, 34, 2) and recipe.filters == ("crop_to_sensor",)
    train_part = NMNIST(few_nmnist, train=True)
    spans = [int(e["t"][-1]) - int(e["t"][0]) for e in map(train_part.load,
                                                          range(len(train_part)))]
    assert recipe.live_time_window_us == round(np.mean([s // 4 for s in spans]))

    rc = main(["eval", "--checkpoint", str(out / "best.pt"), "--root", str(few_nmnist),
               "--cache", str(tmp_path / "cache"), "--json"])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["samples"] == meta["val_samples"]
    assert obj["accuracy"] == pytest.approx(extra["val_accuracy"])  # same data, same model
    assert len(obj["accuracy_per_step"]) == 4
    assert Path(obj["confusion_png"]).read_bytes()[:8] == PNG_MAGIC
    assert Path(obj["accuracy_over_time_png"]).read_bytes()[:8] == PNG_MAGIC


def test_shipped_nmnist_weights_on_held_out_real_data(real_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped `nmnist` weights on the 200 real samples held out of their training."""
    root = real_data / "nmnist-small" / "train"
    rc = main(["eval", "--checkpoint", "nmnist", "--root", str(root), "--json",
               "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ev")])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    _, extra = load_checkpoint(WEIGHTS_DIR / "nmnist.pt")
    opts = extra["meta"]["dataset_options"]
    held_out = NMNIST(root, train=False, test_fraction=opts["val_fraction"],
                      seed=opts["split_seed"])
    trained_on = NMNIST(root, train=True, test_fraction=opts["val_fraction"],
                        seed=opts["split_seed"])
    assert not set(held_out.files) & set(trained_on.files)
    assert obj["samples"] == len(held_out) == extra["meta"]["val_samples"]
    assert obj["accuracy"] >= 0.97
    assert obj["accuracy"] == pytest.approx(extra["val_accuracy"])


@pytest.mark.parametrize("name", ["nmnist", "gestures"])
def test_shipped_weights_are_small_safe_and_describe_their_input(name: str) -> None:
    path = WEIGHTS_DIR / f"{name}.pt"
    assert path.stat().st_size < 2 * 2**20
    torch.load(path, weights_only=True)
    model, extra = load_checkpoint(resolve_checkpoint(name))
    meta = extra["meta"]
    assert len(meta["classes"]) == model.num_classes
    assert list(meta["binning"]["frame_size"]) == list(model.input_size)
    if name == "gestures":  # the streaming side bins live events with this window
        assert meta["binning"]["time_window"] > 0 and meta["sensor_size"] == [128, 128, 2]


def test_eval_split_all_scores_every_file_and_limit_is_stratified(
        few_nmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flat folder held out as a whole: `--split all` scores every file, not the seeded
    20%; `--limit` draws evenly from the classes; eval.json names each file scored."""
    common = ["eval", "--checkpoint", "nmnist", "--root", str(few_nmnist), "--json",
              "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ev")]
    assert main([*common, "--split", "all"]) == 0
    obj = json.loads(capsys.readouterr().out)
    files = sorted(p.name for p in few_nmnist.glob("*.bs2"))
    assert obj["samples"] == len(files) == 40
    assert sorted(Path(s["file"]).name for s in obj["scored"]) == files
    labels = dict(ln.split() for ln in (few_nmnist / "labels.txt").read_text().splitlines()[1:])
    for s in obj["scored"]:
        assert s["label"] == int(labels[Path(s["file"]).stem])
    right = sum(s["label"] == s["predicted"] for s in obj["scored"])
    assert obj["accuracy"] == pytest.approx(right / 40)
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["scored"] == obj["scored"]
    assert obj["latency_steps"] >= 200 and obj["step_latency_p99_ms"] >= obj["step_latency_ms"]

    assert main([*common, "--split", "all", "--limit", "10"]) == 0
    obj = json.loads(capsys.readouterr().out)
    present = {int(v) for v in labels.values()}
    assert obj["samples"] == 10 and {s["label"] for s in obj["scored"]} == present


def test_attention_args_reach_the_checkpoint_and_eval(few_nmnist: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`--attention-args` on train is stored in the checkpoint's JSON; on eval it goes over the
    stored options (here STAtten trained causal, scored in its chunk mode)."""
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "nmnist", "--root", str(few_nmnist), "--config", "tiny",
               "--attention", "statten", "--attention-args", '{"mode": "causal", "chunk": 2}',
               "--epochs", "1", "--out", str(out), "--batch-size", "8", "--embed-dim", "16",
               "--heads", "2", "--time-bins", "4", "--cache", str(tmp_path / "cache"),
               "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    stored = json.loads((out / "best.json").read_text())["config"]
    assert stored["attention"] == "statten"
    assert stored["attention_kwargs"] == {"mode": "causal", "chunk": 2}
    model, _ = load_checkpoint(out / "best.pt")
    assert model.blocks[0].attn.chunk == 2 and model.causal
    rc = main(["eval", "--checkpoint", str(out), "--root", str(few_nmnist), "--json",
               "--cache", str(tmp_path / "cache"), "--attention-args", '{"mode": "chunk"}'])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["attention_kwargs"] == {"mode": "chunk", "chunk": 2}
    rc = main(["eval", "--checkpoint", str(out), "--root", str(few_nmnist),
               "--attention-args", '{"window": 3}'])
    assert rc == 2
    assert "has no option 'window'" in capsys.readouterr().err


def test_train_recipe_fills_unset_options(few_nmnist: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A recipe file sets every option the command line leaves unset (LAMB, a cooldown epoch
    at the final learning rate, label smoothing); the command line wins where it speaks."""
    recipe = tmp_path / "tiny-lamb.json"
    settings = {"dataset": "nmnist", "config": "tiny", "optimizer": "lamb", "lr": 3e-4,
                "weight_decay": 0.06, "epochs": 1, "cooldown_epochs": 1,
                "label_smoothing": 0.1, "time_bins": 4, "batch_size": 8, "warmup_epochs": 0.0}
    recipe.write_text(json.dumps({"description": "test", "settings": {
        k: {"value": v, "source": "tests"} for k, v in settings.items()}}))
    out = tmp_path / "run"
    rc = main(["train", "--recipe", str(recipe), "--root", str(few_nmnist), "--out", str(out),
               "--embed-dim", "16", "--heads", "2", "--lr", "1e-3", "--layout", "ms",
               "--cache", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert json.loads((out / "last.json").read_text())["config"]["layout"] == "ms"
    extra = json.loads((out / "last.json").read_text())["extra"]
    train = extra["train"]
    assert (train["optimizer"], train["weight_decay"], train["label_smoothing"]) == (
        "lamb", 0.06, 0.1)
    assert train["lr"] == 1e-3 and train["cooldown_epochs"] == 1 and extra["epoch"] == 2
    assert extra["meta"]["training_recipe"]["name"] == "tiny-lamb"
    assert extra["meta"]["split"] == (f"{extra['meta']['train_samples']} train / "
                                      f"{extra['meta']['val_samples']} test (flat layout)")


def test_shipped_train_recipes_name_real_options() -> None:
    from spikestream.cli import build_parser
    from spikestream.datasets.registry import dataset_names
    from spikestream.pipeline import list_configs
    from spikestream.pipeline.network.attention import ATTENTION
    from spikestream.pipeline.train_recipes import load_recipe, recipe_names

    assert {"sdt-gesture", "spikformer-gesture", "statten-ncaltech101"} <= set(recipe_names())
    parser = build_parser(["train"])
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    for name in recipe_names():
        r = load_recipe(name)
        s = {k: e["value"] for k, e in r["settings"].items()}
        assert set(s) <= dests, name
        assert s["dataset"] in dataset_names() and s["config"] in list_configs()
        assert s["attention"] in ATTENTION
        assert r["settings"]["lr"]["source"]
    sdt = {k: e["value"] for k, e in load_recipe("sdt-gesture")["settings"].items()}
    assert (sdt["optimizer"], sdt["lr"], sdt["weight_decay"], sdt["label_smoothing"],
            sdt["epochs"], sdt["cooldown_epochs"], sdt["gesture_layout"]) == (
        "lamb", 3e-4, 0.06, 0.1, 200, 10, "ibm")
    # the cosine's end is the config's min_lr over its lr, and the command line still wins
    from spikestream.cli.train import apply_recipe
    args = parser.parse_args(["train", "--dataset", "synthetic", "--root", "x", "--out", "y",
                              "--recipe", "sdt-gesture", "--lr", "1e-3"])
    apply_recipe(args)
    assert args.min_lr_ratio == pytest.approx(1e-5 / 3e-4) and args.lr == 1e-3
    assert args.warmup_epochs == 10 and args.batch_size == 16
