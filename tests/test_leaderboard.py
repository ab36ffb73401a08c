"""`benchmarks/leaderboard.py`: its core run on a tiny synthetic task (two keys, one epoch);
every reported figure is checked against a recount from the run's own outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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
    cells = board.table_rows(rows)
    assert all(len(c) == len(board.COLUMNS) for c in cells)
    assert [c[0] for c in cells] == ["`ssa`", "`lrf_dyn`"]
    for c, r in zip(cells, rows, strict=True):
        assert f"({r['test_correct']}/{r['test_samples']})" in c[2]
        assert c[4] == f"{r['parameters']:,}"
        assert c[13] == "-"  # numba not measured here
    pick = board.choose(rows)
    best = max(r["val_accuracy"] for r in rows)
    assert pick["val_accuracy"] == best
    assert pick["beats_shipped"] == (pick["test_correct"] / pick["test_samples"] > 195 / 199)
    says = board.verdicts(rows, pick, shipped=False)
    assert says[0].startswith("LRF-Dyn against SSA")
    results = {"protocol": board.asdict(protocol), "data": splits.meta, "rows": rows,
               "choice": pick, "verdicts": says, "wall_s": 1.0, "jobs": 1,
               "date": "today", "machine": "here"}
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert board.main(["--from-json", str(tmp_path / "r.json"), "--docs", str(tmp_path)]) == 0
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| " + " | ".join(board.COLUMNS) + " |" in md
    assert md.count("\n| `") == 2
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_without_the_recordings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SPIKESTREAM_REAL_DATA", str(tmp_path))
    assert board.main(["--quick"]) == 3
    assert "nmnist-small" in capsys.readouterr().err
