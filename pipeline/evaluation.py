"""Evaluation: accuracy, per-class accuracy, confusion matrix, accuracy over stream time, latency.

The model runs stepwise, one frame at a time (`init_state` / `step`), exactly as it would on a
live stream, and the decision after step t is the argmax of the mean of the logits of steps
1..t (rate decoding, the same rule as training's loss). `accuracy_per_step[t]` therefore
shows how early the streaming model decides; its last entry is the final accuracy. A model
that cannot step causally (e.g. STAtten's chunk mode) is evaluated with `forward`, which by
the model contract gives the same logits. Latency per step is timed separately, with batch 1
(warm-up steps, then enough timed steps for a median and a 99th percentile).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass
class EvalResult:
    """Scores of one evaluation (`to_json()` gives the `--json` object)."""

    accuracy: float
    samples: int
    classes: list[str]
    per_class_accuracy: list[float]
    confusion: list[list[int]]
    accuracy_per_step: list[float]
    step_latency_ms: float  # median of `latency_steps` timed steps at batch 1
    latency_samples: int
    step_latency_p99_ms: float = float("nan")
    latency_steps: int = 0
    predictions: list[int] = field(default_factory=list)  # final decision per sample, in order
    targets: list[int] = field(default_factory=list)
    mode: str = "step"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        pairs = zip(self.classes, self.per_class_accuracy, strict=True)
        d["per_class_accuracy"] = {c: (None if np.isnan(a) else a) for c, a in pairs}
        return d


def _run_stepwise(model: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Logits `[T, B, C]` of `frames[T, B, P, H, W]`, one `model.step` per frame."""
    state = model.init_state(frames.shape[1], device=frames.device)
    out = []
    for t in range(frames.shape[0]):
        logits, state = model.step(frames[t], state)
        out.append(logits)
    return torch.stack(out)


def _steps_ok(model: nn.Module) -> bool:
    return bool(getattr(model, "causal", True))


def stratified_subset(targets: list[int], limit: int, seed: int = 0) -> list[int]:
    """`limit` sample indices drawn evenly from every class (round robin over the classes, a
    seeded shuffle within each), in ascending order."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    rng = np.random.default_rng(seed)
    arr = np.asarray(targets)
    pools = []
    for c in np.unique(arr):
        idx = np.flatnonzero(arr == c)
        rng.shuffle(idx)
        pools.append(idx.tolist())
    picked: list[int] = []
    depth = 0
    while len(picked) < min(limit, len(arr)):
        for pool in pools:
            if depth < len(pool) and len(picked) < limit:
                picked.append(pool[depth])
        depth += 1
    return sorted(picked)


@torch.no_grad()
def measure_step_latency(model: nn.Module, dataset: Dataset, device: torch.device,
                         samples: int = 8, steps: int = 200,
                         warmup: int = 20) -> tuple[float, float, int, int]:
    """Wall time of one `model.step` at batch 1: `(p50_ms, p99_ms, timed steps, samples)`.

    The frames of the first `samples` samples are stepped through again and again (state
    reset per sample) until `warmup` untimed and then `steps` timed steps have run."""
    model.eval()
    n = min(samples, len(dataset))  # type: ignore[arg-type]
    seqs = [dataset[i][0].to(device)[:, None] for i in range(n)]  # [T, 1, P, H, W] each
    times: list[float] = []
    done = 0
    while seqs and len(times) < steps:
        for frames in seqs:
            state = model.init_state(1, device=device)
            for t in range(frames.shape[0]):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                _, state = model.step(frames[t], state)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if done >= warmup:
                    times.append(time.perf_counter() - t0)
                done += 1
            if len(times) >= steps:
                break
    if not times:
        return float("nan"), float("nan"), 0, n
    ms = 1000.0 * np.asarray(times)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(times), n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    classes: list[str] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    latency_samples: int = 8,
    latency_steps: int = 200,
    progress: bool = True,
) -> EvalResult:
    """Score `model` on a dataset of `(frames[T, P, H, W], label)` (see the module doc)."""
    device = torch.device(device)
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    n_classes = len(classes) if classes else None
    confusion: np.ndarray | None = None
    correct_t: np.ndarray | None = None
    total = 0
    mode = "step"
    predictions: list[int] = []
    targets: list[int] = []
    with Progress(TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("eval", total=len(loader))
        for frames, target in loader:
            frames = frames.to(device).transpose(0, 1)  # [T, B, P, H, W]
            if total == 0 and not _steps_ok(model):
                mode = "forward"
            logits = _run_stepwise(model, frames) if mode == "step" else model(frames)
            logits = logits.float().cpu()
            if confusion is None:
                n_classes = n_classes or logits.shape[-1]
                confusion = np.zeros((n_classes, n_classes), np.int64)
            running = logits.cumsum(0) / torch.arange(1, logits.shape[0] + 1)[:, None, None]
            pred_t = running.argmax(-1)  # [T, B]
            hits = (pred_t == target[None]).sum(1).numpy()
            if correct_t is None:
                correct_t = np.zeros(len(hits), np.int64)
            if len(hits) != len(correct_t):
                raise ValueError(f"samples differ in length: {len(hits)} vs {len(correct_t)} "
                                 "timesteps (bin with n_time_bins for a fixed T)")
            correct_t += hits
            np.add.at(confusion, (target.numpy(), pred_t[-1].numpy()), 1)
            predictions.extend(pred_t[-1].tolist())
            targets.extend(target.tolist())
            total += int(target.numel())
            bar.advance(task)
    if total == 0 or confusion is None or correct_t is None:
        raise ValueError("the evaluation set is empty")
    per_class = [
        float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else float("nan")
        for c in range(confusion.shape[0])
    ]
    p50, p99, lat_steps, lat_n = (
        measure_step_latency(model, dataset, device, latency_samples, latency_steps)
        if mode == "step" and latency_samples > 0 and latency_steps > 0
        else (float("nan"), float("nan"), 0, 0))
    names = list(classes) if classes else [str(c) for c in range(confusion.shape[0])]
    return EvalResult(
        accuracy=float(np.trace(confusion) / total),
        samples=total,
        classes=names,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        accuracy_per_step=(correct_t / total).tolist(),
        step_latency_ms=p50,
        latency_samples=lat_n,
        step_latency_p99_ms=p99,
        latency_steps=lat_steps,
        predictions=predictions,
        targets=targets,
        mode=mode,
    )


def confusion_rows(result: EvalResult) -> np.ndarray:
    """The confusion matrix with each row (a true class) divided by its sample count: cell
    (i, j) is the fraction of class i's samples decided as j; a class without samples is a
    row of NaN."""
    cm = np.asarray(result.confusion, dtype=np.float64)
    totals = cm.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, cm / totals, np.nan)


@dataclass(frozen=True)
class TimeAxis:
    """How evaluation steps map to stream time: `bin_ms` per step (None: steps only) and what
    that length is."""

    bin_ms: float | None
    description: str


def time_axis(recipe: Any) -> TimeAxis:
    """The step length of a checkpoint's `InputRecipe`: its time window, or for n equal-time
    bins per sample the training samples' mean bin length (the live equivalent, where training
    measured it); event-count bins have no fixed length."""
    if recipe is None:
        return TimeAxis(None, "timesteps")
    if recipe.mode == "time_window":
        ms = recipe.value / 1000
        return TimeAxis(ms, f"time windows of {ms:g} ms")
    if recipe.mode == "n_time_bins" and recipe.live_time_window_us:
        ms = recipe.live_time_window_us / 1000
        return TimeAxis(ms, f"{recipe.value} equal bins per sample, {ms:g} ms each on average "
                            "(the live equivalent)")
    return TimeAxis(None, f"timesteps ({recipe.mode.replace('_', ' ')} {recipe.value})")


def accuracy_over_time(result: EvalResult, axis: TimeAxis
                       ) -> tuple[np.ndarray, np.ndarray, float]:
    """`(x, accuracy, chance)`: the end of each step (ms when the axis has a bin length, else
    the step number), the accuracy of the running decision there, and chance (1 / classes)."""
    acc = np.asarray(result.accuracy_per_step, dtype=np.float64)
    steps = np.arange(1, len(acc) + 1, dtype=np.float64)
    x = steps * axis.bin_ms if axis.bin_ms else steps
    return x, acc, 1.0 / max(1, len(result.classes))


def plot_confusion(result: EvalResult, path: str | Path, title: str | None = None) -> Path:
    """Write the row-normalised confusion matrix (rows: true class, columns: predicted; each
    row sums to 1) with a colour bar as a PNG; `title` names the checkpoint and dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion_rows(result)
    n = rows.shape[0]
    size = max(4.5, min(16.0, 0.45 * n + 3))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), result.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), result.classes, fontsize=7)
        for i in range(n):
            for j in range(n):
                if rows[i, j] > 0:
                    ax.text(j, i, f"{rows[i, j]:.2f}".lstrip("0") if rows[i, j] < 1 else "1",
                            ha="center", va="center", fontsize=6,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}accuracy {result.accuracy:.2%} on {result.samples} samples "
                 "(rows normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_accuracy_over_time(result: EvalResult, path: str | Path,
                            axis: TimeAxis | float | None = None,
                            title: str | None = None, *, bin_ms: float | None = None) -> Path:
    """Write the accuracy of the running decision after each step (how early the streaming
    model decides) against stream time in ms where bins are timed (`axis`, from `time_axis`,
    or a plain `bin_ms`), with the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(axis, TimeAxis):
        ms = axis if axis is not None else bin_ms
        axis = TimeAxis(ms, f"bins of {ms:g} ms" if ms else "timesteps")
    x, acc, chance = accuracy_over_time(result, axis)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(x, acc, marker="o", ms=3, label="running decision")
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance (1/{len(result.classes)})")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, x[-1] * 1.02)
    ax.set_xlabel(f"time into the stream (ms): {axis.description}" if axis.bin_ms
                  else axis.description, fontsize=8)
    ax.set_ylabel("accuracy of the running decision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}final {acc[-1]:.2%}, {result.samples} samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
