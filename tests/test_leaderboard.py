"""`benchmarks/leaderboard.py`: its core run on a tiny synthetic task (two keys, one epoch);
every reported figure is checked against a recount from the run's own outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]


def _load_board():
    spec = importlib.util.spec_from_file_location("leaderboard", ROOT / "benchmarks"
                                                  / "leaderboard.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


board = _load_board()

T, SIZE = 4, 16


class Blobs(Dataset):
    """Two classes of event-count frames: events in the left (0) or right (1) half."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = [i % 2 for i in range(n)]
        self.frames = []
        for label in self.targets:
            x = (torch.rand(T, 2, SIZE, SIZE, generator=g) < 0.03).float()
            half = slice(0, SIZE // 2) if label == 0 else slice(SIZE // 2, SIZE)
            x[:, :, :, half] += (torch.rand(T, 2, SIZE, SIZE // 2, generator=g) < 0.3).float()
            self.frames.append(x)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.frames[i], self.targets[i]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    protocol = board.Protocol(epochs=1, batch_size=8, latency_warmup=2, latency_steps=8)
    test = Blobs(12, seed=3)
    splits = board.Splits(Blobs(16, seed=1), Blobs(8, seed=2), test, ["0", "1"], None,
                          {"train_samples": 16, "val_samples": 8, "held_out_samples": 12})
    out = tmp_path_factory.mktemp("board")
    rows = board.run_board(["ssa", "lrf_dyn"], protocol, splits, out,
                           engines=("eager", "torchscript"))
    return protocol, splits, rows


def test_rows_are_recounted_from_the_run(run) -> None:
    from spikestream.pipeline import load_checkpoint, state_nbytes

    protocol, splits, rows = run
    assert [r["key"] for r in rows] == ["ssa", "lrf_dyn"]
    labels = [splits.test[i][1] for i in range(len(splits.test))]
    for r in rows:
        model, extra = load_checkpoint(r["checkpoint"])
        assert extra["model_name"]["attention"] == r["key"]
        assert r["parameters"] == sum(p.numel() for p in model.parameters())
        assert r["state_bytes"] == state_nbytes(model.init_state(1))
        # the running decision after each step, recounted with a plain step loop
        hits = [0] * T
        preds = []
        with torch.no_grad():
            for i in range(len(splits.test)):
                x, y = splits.test[i]
                state, total = model.init_state(1), 0
                for t in range(T):
                    logits, state = model.step(x[t][None], state)
                    total = total + logits
                    hits[t] += int(total.argmax(-1).item() == y)
                preds.append(int(total.argmax(-1).item()))
        assert r["targets"] == labels
        assert r["predictions"] == preds
        assert r["test_correct"] == sum(p == y for p, y in zip(preds, labels, strict=True))
        assert r["test_samples"] == len(labels) == 12
        assert r["test_accuracy"] == pytest.approx(r["test_correct"] / 12)
        assert r["accuracy_at"]["1"] == pytest.approx(hits[0] / 12)
        assert r["accuracy_at"]["2"] == pytest.approx(hits[1] / 12)
        assert r["accuracy_at"]["4"] == pytest.approx(hits[3] / 12)
        # the validation score is the kept epoch's (one epoch: the only one)
        assert r["best_epoch"] == 1 == r["epoch"]
        assert r["val_accuracy"] == pytest.approx(r["history"][0]["val_accuracy"])
        assert r["energy_uj_per_step"] == pytest.approx(
            (0.9 * r["ac_per_step"] + 4.6 * r["mac_per_step"]) * 1e-6)
        assert r["mac_per_step"] > 0  # the first conv sees event counts
        # the step allocates at least the new state and the logits
        assert r["peak_step_bytes"] >= r["state_bytes"]
        assert set(r["latency_ms"]) == {"eager", "torchscript"}
        assert all(v > 0 for v in r["latency_ms"].values())
        assert r["engine_mode"]["eager"] == "eager"


def test_table_columns_and_choice(run, tmp_path: Path) -> None:
    protocol, splits, rows = run
    agg = board.aggregate({0: rows})
    cells = board.table_rows(agg)
    assert all(len(c) == len(board.COLUMNS) for c in cells)
    assert [c[0] for c in cells] == ["`ssa`", "`lrf_dyn`"]
    for c, r in zip(cells, rows, strict=True):
        assert f"({r['test_correct']} /{r['test_samples']})" in c[2]
        assert c[4] == f"{r['parameters']:,}"
        assert c[13] == "-"  # numba not measured here
    pick = board.choose(agg)
    best = max(r["val_accuracy"] for r in rows)
    assert pick["val_accuracy"] == best and pick["seed"] == 0
    assert pick["beats_shipped"] == (pick["test_correct"] / pick["test_samples"] > 195 / 199)
    says = board.verdicts(agg, pick, shipped=False)
    assert says[0].startswith("LRF-Dyn against SSA")
    # one seed's leaderboard.json, as `run_seeds` writes it, gives the docs
    results = {"protocol": board.asdict(protocol), "data": splits.meta, "rows": rows,
               "wall_s": 1.0, "jobs": 1, "date": "today", "machine": "here"}
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert board.main(["--from-json", str(tmp_path / "r.json"), "--docs", str(tmp_path)]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| " + " | ".join(board.COLUMNS) + " |" in md
    assert md.count("\n| `") == 4  # the table over seeds and each seed's table
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_runs_are_not_trained_again(run, monkeypatch: pytest.MonkeyPatch) -> None:
    protocol, splits, rows = run
    out = Path(rows[0]["checkpoint"]).parents[1]
    done = board.finished_runs(out, ["ssa", "lrf_dyn", "sdsa"], protocol)
    assert sorted(done) == ["lrf_dyn", "ssa"]  # sdsa never ran
    assert board.finished_runs(out, ["ssa"], board.replace(protocol, seed=1)) == {}
    monkeypatch.setattr(board, "train_key", lambda *a, **k: pytest.fail("trained again"))
    again = board.run_board(["ssa"], protocol, splits, out, engines=("eager",), trained=done)
    assert again[0]["test_correct"] == rows[0]["test_correct"]
    assert again[0]["val_accuracy"] == rows[0]["val_accuracy"]


def _row(key: str, val: float, correct: int, energy: float, seed: int) -> dict:
    """A hand-made row of one (key, seed) run, as `run_board` gives it."""
    return {"key": key, "val_accuracy": val, "best_epoch": 3 + seed, "test_correct": correct,
            "test_samples": 199, "test_accuracy": correct / 199,
            "accuracy_at": {"1": 0.5, "2": 0.7, "4": 0.8, "8": correct / 199},
            "parameters": 1000, "ac_per_step": 100.0 + seed, "mac_per_step": 50.0,
            "energy_uj_per_step": energy, "peak_step_bytes": 4096, "peak_attention_bytes": 1024,
            "state_bytes": 2048, "latency_ms": {"eager": 1.0 + seed}, "engine_mode":
            {"eager": "eager"}, "train_cpu_s": 60.0 * (1 + seed),
            "checkpoint": f"seed-{seed}/{key}/best.pt"}


def test_aggregate_over_seeds_and_its_markdown(tmp_path: Path) -> None:
    per_seed = {
        0: [_row("ssa", 0.80, 178, 1.8, 0), _row("lrf_dyn", 0.85, 172, 1.7, 0)],
        1: [_row("ssa", 0.84, 176, 1.8, 1), _row("lrf_dyn", 0.83, 176, 1.7, 1)],
        2: [_row("ssa", 0.82, 179, 1.8, 2), _row("lrf_dyn", 0.86, 180, 1.7, 2)],
    }
    agg = board.aggregate(per_seed)
    ssa, dyn = agg
    assert [r["key"] for r in agg] == ["ssa", "lrf_dyn"]
    assert ssa["seeds"] == [0, 1, 2]
    assert ssa["test_counts"] == [178, 176, 179] and ssa["test_samples"] == 199
    assert ssa["test_accuracy"] == pytest.approx((178 + 176 + 179) / 3 / 199)
    assert ssa["test_min"] == pytest.approx(176 / 199)
    assert ssa["test_max"] == pytest.approx(179 / 199)
    assert ssa["test_std"] == pytest.approx(float(np.std([178, 176, 179], ddof=1)) / 199)
    assert ssa["val_accuracy"] == pytest.approx(0.82)
    assert ssa["best_epochs"] == [3, 4, 5]
    assert ssa["ac_per_step"] == pytest.approx(101.0)
    assert ssa["latency_ms"]["eager"] == pytest.approx(2.0)
    assert ssa["train_cpu_s"] == pytest.approx(120.0)
    assert ssa["shapes_agree"] and ssa["peak_step_bytes"] == 4096
    assert dyn["test_counts"] == [172, 176, 180]
    assert dyn["val_accuracy"] == pytest.approx((0.85 + 0.83 + 0.86) / 3)
    # chosen by mean validation; the run shipped is that key's best-validation seed
    pick = board.choose(agg)
    assert (pick["key"], pick["seed"], pick["test_correct"]) == ("lrf_dyn", 2, 180)
    assert pick["checkpoint"] == "seed-2/lrf_dyn/best.pt"
    says = board.verdicts(agg, pick, shipped=False)
    assert "wins 1, ties 1 and loses 1" in says[0]
    assert "within the seed spread" in says[0]
    assert "seed 2" in says[1]
    # the docs show every seed's held-out count
    results = {"protocol": board.asdict(board.Protocol()), "seeds": [0, 1, 2],
               "data": {"train_samples": 639, "val_samples": 162, "held_out_samples": 199},
               "runs": {str(s): rows for s, rows in per_seed.items()}, "verdicts": says,
               "seed_wall_s": {"0": 60.0, "1": 60.0, "2": 60.0}, "wall_s": 180.0, "jobs": 1,
               "date": "today", "machine": "here"}
    md_path, _ = board.write_docs(json.loads(json.dumps(results)), tmp_path)
    md = md_path.read_text()
    assert "(178, 176, 179 /199)" in md and "(172, 176, 180 /199)" in md
    for rows in per_seed.values():
        for r in rows:
            assert f"{r['test_correct']}/199" in md.split("Each seed's runs")[1]
    assert "seed 0: val (epoch), held out | seed 1" in md


def test_refuses_without_the_recordings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SPIKESTREAM_REAL_DATA", str(tmp_path))
    assert board.main(["--quick"]) == 3
    assert "nmnist-small" in capsys.readouterr().err
