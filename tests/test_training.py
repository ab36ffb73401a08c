"""Training: losses against their definitions, the schedule, augmentations, a tiny run that
learns, checkpoints loadable with weights_only=True, exact resume, and DDP on 2 CPU processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spikestream.pipeline.augment import FrameAugment
from spikestream.pipeline.checkpoint import load_checkpoint
from spikestream.pipeline.network.configs import create_model
from spikestream.pipeline.training import TrainConfig, cosine_lambda, fit, spike_loss

T, P, H, W = 4, 2, 16, 16


class Bars(Dataset):
    """Class 0: a vertical bar sweeping right in the left half; class 1: a horizontal bar
    sweeping down in the right half. Sparse noise; seeded."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = (torch.rand(n, T, P, H, W, generator=g) < 0.02).float()
        self.y = torch.arange(n) % 2
        for i in range(n):
            off = int(torch.randint(0, 3, (1,), generator=g))
            for t in range(T):
                if self.y[i] == 0:
                    self.x[i, t, 1, 2:14, off + t] = 1
                else:
                    self.x[i, t, 0, off + 2 * t, 9:15] = 1

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("tiny", "ssa", input_size=(H, W), in_channels=P, num_classes=2,
                        time_steps=T, embed_dim=16, heads=2, stem_pool=(True, True))


def test_losses_match_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 4, generator=g)
    y = torch.tensor([0, 3, 1])
    assert torch.allclose(spike_loss(logits, y, "rate"), F.cross_entropy(logits.mean(0), y))
    per_t = torch.stack([F.cross_entropy(logits[t], y) for t in range(5)]).mean()
    assert torch.allclose(spike_loss(logits, y, "tet"), per_t)
    mse = ((logits - 1) ** 2).mean()
    assert torch.allclose(spike_loss(logits, y, "tet", tet_lambda=0.2), 0.8 * per_t + 0.2 * mse)
    with pytest.raises(ValueError):
        spike_loss(logits[0], y)


def test_cosine_schedule() -> None:
    f = cosine_lambda(total_steps=110, warmup_steps=10, min_ratio=0.0)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_augmentations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((6, 2, 20, 24), 3.0), generator=g)
    assert torch.equal(FrameAugment(flip=1.0)(x), x.flip(-1))
    rolled = FrameAugment(roll=4, generator=torch.Generator().manual_seed(1))(x)
    assert rolled.sum() == x.sum() and not torch.equal(rolled, x)
    # binomial thinning of counts keeps each event with probability 1 - drop
    kept = torch.stack([FrameAugment(drop=0.3, generator=torch.Generator().manual_seed(s))(x)
                        for s in range(20)])
    assert (kept <= x).all() and (kept == kept.round()).all()
    assert kept.sum() / (20 * x.sum()) == pytest.approx(0.7, abs=0.01)
    binary = (x > 3).float()
    dropped = FrameAugment(drop=0.5, generator=g)(binary)
    assert set(dropped.unique().tolist()) <= {0.0, 1.0} and (dropped <= binary).all()
    assert FrameAugment.from_spec("roll,drop").flip == 0
    with pytest.raises(ValueError, match="unknown"):
        FrameAugment.from_spec("rotate")


def test_fit_learns_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    train, val = Bars(64, 0), Bars(32, 1)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=5e-3, warmup_epochs=0.5, seed=3)
    full = fit(tiny_model(), train, val, cfg, tmp_path / "full", progress=False, log=None,
               model_name={"config": "tiny", "attention": "ssa"}, meta={"dataset": "bars"})
    assert len(full.history) == 4
    assert full.history[-1]["loss"] < 0.5 * math.log(2)  # well below chance
    assert full.best_accuracy >= 0.9
    model, extra = load_checkpoint(tmp_path / "full" / "best.pt")
    assert extra["meta"]["dataset"] == "bars" and extra["val_accuracy"] == full.best_accuracy
    torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)
    cfg_json = json.loads((tmp_path / "full" / "best.json").read_text())
    assert cfg_json["extra"]["train"]["epochs"] == 4

    # interrupted after 2 epochs, then resumed to 4: the same weights as the uninterrupted run
    _stop_after(tiny_model(), train, val, cfg, tmp_path / "part", 2)
    resumed = tiny_model(seed=99)  # different init: everything must come from the state file
    res = fit(resumed, train, val, cfg, tmp_path / "part", resume=True, progress=False, log=None)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    last_full, _ = load_checkpoint(tmp_path / "full" / "last.pt")
    for (k, a), b in zip(last_full.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
    assert res.history[-1]["val_accuracy"] == full.history[-1]["val_accuracy"]


def _stop_after(model, train, val, cfg: TrainConfig, out: Path, epochs: int) -> None:
    """Run `epochs` epochs of a `cfg.epochs` schedule: the state file after an interruption."""

    class Stop(Exception):
        pass

    seen = []

    def log(line: str) -> None:
        seen.append(line)
        if len(seen) == epochs:
            raise Stop

    with pytest.raises(Stop):
        fit(model, train, val, cfg, out, progress=False, log=log)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert int(state["epoch"]) == epochs - 1


DDP_SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import Bars, tiny_model
from spikestream.pipeline.training import TrainConfig, fit, setup_distributed, shutdown_distributed
import torch.distributed as dist
info = setup_distributed("cpu")
assert info.world == 2 and dist.get_backend() == "gloo"
model = tiny_model()
res = fit(model, Bars(32, 0), Bars(16, 1), TrainConfig(epochs=2, batch_size=8, lr=5e-3),
          {out!r}, progress=False, log=None, info=info)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
with open({out!r} + f"/rank{{info.rank}}.json", "w") as f:  # stdout lines may interleave
    json.dump(res.history[-1], f)
shutdown_distributed()
"""


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): ranks stay identical, validation covers all data."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "o")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    last = [json.loads((tmp_path / "o" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert last[0] == {**last[1], "elapsed_s": last[0]["elapsed_s"]}  # the same summed scores
    assert last[0]["val_samples"] == 16  # the 16 validation samples, each once
    assert (tmp_path / "o" / "last.pt").is_file()
    torch.load(tmp_path / "o" / "last.pt", weights_only=True)


class _InterruptAt(Dataset):
    """`Bars` that sends this process a SIGINT when sample `at` of the `after`-th pass over
    the set is read, as a Ctrl-C in the middle of an epoch would."""

    def __init__(self, base: Dataset, at_read: int) -> None:
        self.base, self.at_read, self.reads = base, at_read, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        self.reads += 1
        if self.reads == self.at_read:
            os.kill(os.getpid(), signal.SIGINT)
        return self.base[i]


def test_sigint_mid_epoch_saves_the_batch_and_resume_gives_the_uninterrupted_weights(
        tmp_path: Path) -> None:
    train, val = Bars(48, 0), Bars(16, 1)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=5e-3, warmup_epochs=0.5, seed=3)
    full = fit(tiny_model(), train, val, cfg, tmp_path / "full", progress=False, log=None)
    # epoch 1 reads 48 samples for training and 48 for BN recalibration; the signal lands in
    # epoch 2's third batch, which finishes before the state is saved
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), _InterruptAt(train, 48 + 48 + 8 * 2 + 3), val, cfg, tmp_path / "part",
            progress=False, log=None)
    state = torch.load(tmp_path / "part" / "train_state.pt", weights_only=True)
    assert int(state["epoch"]) == 0 and int(state["step"]) == 3
    resumed = tiny_model(seed=99)
    res = fit(resumed, train, val, cfg, tmp_path / "part", resume=True, progress=False, log=None)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    for a, b in zip(full.history, res.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)  # partial sums carried over
    last_full, _ = load_checkpoint(tmp_path / "full" / "last.pt")
    for (k, a), b in zip(last_full.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.allclose(a, b, atol=1e-6), k
    log = (tmp_path / "part" / "train.log").read_text()
    assert "interrupted in epoch 2 after batch 3/6" in log
