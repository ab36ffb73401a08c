"""`spikestream train` as a user runs it: a run on synthetic gestures stopped by Ctrl-C
(SIGINT) leaves a state that `--resume` continues; `metrics.csv` holds one row per epoch with
the values the run logged; the checkpoint JSON keeps only the dataset's own options; every
option has a help text and none says "(default: None)"."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from spikestream.cli import build_parser

CLI = [sys.executable, "-c", "import sys; from spikestream.cli import main; sys.exit(main())"]
EPOCHS = 12


def _train(tmp_path: Path, *extra: str) -> subprocess.Popen:
    args = [*CLI, "train", "--dataset", "synthetic", "--samples-per-class", "2",
            "--clip-seconds", "0.2", "--limit", "11", "--epochs", str(EPOCHS),
            "--batch-size", "1", "--frame-size", "16", "16", "--embed-dim", "16", "--heads", "2",
            "--depth", "1", "--stem-pool", "11", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--no-progress", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_sigint_leaves_a_checkpoint_that_resumes_and_the_csv_has_a_row_per_epoch(tmp_path):
    run = tmp_path / "run"
    proc = _train(tmp_path)
    deadline = time.monotonic() + 240
    while not (run / "metrics.csv").is_file():  # wait for the first epoch
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "--resume" in out
    state = torch.load(run / "train_state.pt", weights_only=True)
    stopped_after = int(state["epoch"]) + 1  # whole epochs done
    assert 1 <= stopped_after < EPOCHS
    last = json.loads((run / "last.json").read_text())
    assert last["extra"]["interrupted"]["epoch"] == stopped_after + 1
    torch.load(run / "last.pt", weights_only=True)

    proc = _train(tmp_path, "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    log = (run / "train.log").read_text()
    assert "interrupted in epoch" in log and "resumed from" in log
    logged = {}
    for line in log.splitlines():
        if line.startswith("{") and '"epoch"' in line:
            row = json.loads(line)
            assert row["epoch"] not in logged  # every epoch logged once across both runs
            logged[row["epoch"]] = row
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert sorted(logged) == list(range(1, EPOCHS + 1))
    for r in rows:
        want = logged[int(r["epoch"])]
        assert set(r) == set(want)
        for k, v in want.items():
            assert float(r[k]) == float(v), (k, r[k], v)
    # the checkpoint JSON holds the synthetic dataset's options only
    opts = json.loads((run / "best.json").read_text())["extra"]["meta"]["dataset_options"]
    assert set(opts) == {"num_classes", "split_seed", "samples_per_class", "clip_seconds"}
    assert json.loads((run / "best.json").read_text())["extra"]["meta"]["train_samples"] == 11


def test_every_train_option_has_help_and_no_none_default(capsys):
    parser = build_parser(["train"])
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    for action in sub._actions:
        assert action.help, action.option_strings
    text = sub.format_help()
    assert "default: None" not in text and "default: False" not in text
    assert "(default 16)" in text  # a real default is still named (the recipe may set it)
