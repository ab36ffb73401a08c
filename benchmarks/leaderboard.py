"""One leaderboard of every attention mechanism, trained and measured under one fixed protocol.

Every key (`ssa`, `sdsa`, `statten` in its causal mode, `a2os2a`, `sssa`, `lrf_ssa`,
`lrf_dyn`) is trained on the 1,000 real N-MNIST recordings of `nmnist-small/train` with the
shipped `nmnist` checkpoint's settings (`tiny`, 32x32 frames, 8 equal time bins, stem pool
110, batch 32, AdamW at 2e-3 with one warm-up epoch and a cosine decay, roll + drop
augmentation, CPU, one torch thread per run), once per training seed (`--seeds`, default
0,1,2: initialisation, batch order and augmentation). Data: the dataset registry's seeded
stratified split (801 train / 199 held out); a validation part is carved from the training
part with the same stratified split (`--val-fraction`, seed 0); both stay the same for every
training seed. Validation picks the epoch of each run (`best.pt`) and, by its mean over seeds,
the mechanism that would be shipped (its best-validation seed's run); the held-out part is
only scored.

Per key and seed: validation and held-out accuracy (running decision after 1, 2, 4 and 8
steps, as `spikestream eval` decides), parameters, synaptic operations and energy per step
(`network.energy`, over every held-out sample), the peak memory of one eager `model.step` (the
allocator's running total of live bytes, from torch's profiler, above what was live before the
step: activations and the new state on top of weights, old state and input), the state's bytes,
and the step latency of each engine (`make_step`: eager, torchscript, numba; batch 1, one
thread, median of timed steps after a warm-up; a fallback shows as the mode that ran). Each
seed's runs go to `OUT/seed-N/` (`KEY/best.pt`, `KEY/train.json` once a run finished, and the
seed's `leaderboard.json`), so `--reuse` resumes an interrupted board; `aggregate` takes them
over seeds.

Writes `docs/leaderboard.md` (the protocol above a table over seeds and each seed's scores)
and `docs/leaderboard.png` (held-out accuracy against energy per step, min-max over seeds).
Training runs in `--jobs` processes at once; every measurement runs afterwards, one at a time,
in this process. `--from-json OUT` writes the docs from the seeds that finished.

    SPIKESTREAM_REAL_DATA=/work/shared/data OMP_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/leaderboard.py [--epochs N] [--keys ssa,lrf_dyn] [--quick]
        [--seeds 0,1,2] [--jobs 2] [--out DIR] [--reuse] [--ship] [--from-json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

KEYS = ("ssa", "sdsa", "statten", "a2os2a", "sssa", "lrf_ssa", "lrf_dyn")
ATTENTION_KWARGS: dict[str, dict[str, Any]] = {"statten": {"mode": "causal"}}
ENGINES = ("eager", "torchscript", "numba")
DEFAULT_EPOCHS = 10
QUICK_EPOCHS = 2
# the shipped `nmnist` checkpoint's held-out score under the same split (README)
SHIPPED_CORRECT, SHIPPED_SAMPLES = 195, 199
ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECORD = "train.json"
DEFAULT_SEEDS = (0, 1, 2)
# figures set by the shapes alone: the first seed's run's stand for every seed
SHAPE_FIGURES = ("parameters", "peak_step_bytes", "peak_attention_bytes", "state_bytes")


@dataclass
class Protocol:
    """What every run shares (the shipped `nmnist` checkpoint's training settings)."""

    epochs: int = DEFAULT_EPOCHS
    config: str = "tiny"
    stem_pool: str = "110"
    batch_size: int = 32
    lr: float = 2e-3
    warmup_epochs: float = 1.0
    seed: int = 0
    augment: str = "roll,drop"
    held_out_fraction: float = 0.2  # the registry's split (`--val-fraction` of `train`)
    val_fraction: float = 0.2  # of the training part, for model selection
    split_seed: int = 0
    threads: int = 1
    latency_warmup: int = 20
    latency_steps: int = 200


@dataclass
class Splits:
    """Frames of the three parts, the input recipe and the class names."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    recipe: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


class Part(Subset):
    """A subset of a `FrameDataset` that keeps `without_augment` (BatchNorm recalibration
    in `fit` uses the unaugmented frames)."""

    def without_augment(self) -> Part:
        inner = getattr(self.dataset, "without_augment", lambda: self.dataset)()
        return Part(inner, self.indices)

    @property
    def targets(self) -> list[int]:
        return [int(self.dataset.targets[i]) for i in self.indices]  # type: ignore[attr-defined]


def data_root() -> Path:
    """`$SPIKESTREAM_REAL_DATA` or `../shared/data` beside the project."""
    env = os.environ.get("SPIKESTREAM_REAL_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def nmnist_splits(root: Path, protocol: Protocol, cache: Path | None = None) -> Splits:
    """Train / validation / held-out frames of `root` (`nmnist-small/train`) under `protocol`."""
    from spikestream.datasets.registry import create_dataset, get_dataset_entry
    from spikestream.datasets.samples import stratified_split
    from spikestream.pipeline.augment import FrameAugment
    from spikestream.pipeline.recipe import default_cache, frames_dataset, recipe_for_dataset

    opts = {"val_fraction": protocol.held_out_fraction, "split_seed": protocol.split_seed}
    train_ev = create_dataset("nmnist", root, part="train", **opts)
    test_ev = create_dataset("nmnist", root, part="test", **opts)
    spec = get_dataset_entry("nmnist")
    fit_idx, val_idx = stratified_split(train_ev.targets, protocol.val_fraction,
                                        protocol.split_seed)
    # the recipe's live equivalent is measured on the whole training part, as `train` does
    recipe = recipe_for_dataset(train_ev, spec.binning, spec.frame_size)
    augment = FrameAugment.from_spec(protocol.augment)
    cache = cache or default_cache()
    frames = frames_dataset(train_ev, recipe, cache, augment if augment.active else None)
    test = frames_dataset(test_ev, recipe, cache)
    meta = {
        "dataset": "nmnist",
        "dataset_options": {"val_fraction": protocol.held_out_fraction,
                            "split_seed": protocol.split_seed},
        "classes": list(train_ev.classes),
        "sensor_size": list(train_ev.sensor_size),
        "binning": {**spec.binning, "frame_size": list(spec.frame_size)},
        "frame_params": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in frames.params.items()},
        "augment": repr(augment),
        "train_samples": len(fit_idx),
        "val_samples": len(val_idx),
        "held_out_samples": len(test),
        "model_selection": f"best epoch on {len(val_idx)} validation samples carved from the "
                           f"{len(train_ev)} of the training part (seed {protocol.split_seed})",
    }
    return Splits(Part(frames, fit_idx), Part(frames.without_augment(), val_idx), test,
                  list(train_ev.classes), recipe, meta)


def build_model(key: str, protocol: Protocol, sample: torch.Tensor, num_classes: int) -> Any:
    """The protocol's model for attention `key` and frames like `sample[T, P, H, W]`."""
    from spikestream.pipeline import create_model

    torch.manual_seed(protocol.seed)
    return create_model(protocol.config, key, ATTENTION_KWARGS.get(key, {}),
                        input_size=tuple(sample.shape[-2:]), in_channels=int(sample.shape[1]),
                        num_classes=num_classes, time_steps=int(sample.shape[0]),
                        stem_pool=tuple(c == "1" for c in protocol.stem_pool))


def train_key(key: str, protocol: Protocol, splits: Splits, out_dir: Path) -> dict[str, Any]:
    """Train one key; its `best.pt` (best validation epoch) is in `out_dir/key`."""
    from spikestream.pipeline.training import TrainConfig, fit

    torch.set_num_threads(protocol.threads)
    x0, _ = splits.train[0]
    model = build_model(key, protocol, x0, len(splits.classes))
    cfg = TrainConfig(epochs=protocol.epochs, batch_size=protocol.batch_size, lr=protocol.lr,
                      warmup_epochs=protocol.warmup_epochs, seed=protocol.seed, device="cpu")
    meta = {**splits.meta, "command": f"python benchmarks/leaderboard.py (key {key}, "
                                      f"{protocol.epochs} epochs)"}
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = fit(model, splits.train, splits.val, cfg, out_dir / key,
                 model_name={"config": protocol.config, "attention": key,
                             "attention_kwargs": ATTENTION_KWARGS.get(key, {})},
                 meta=meta, recipe=splits.recipe, progress=False, log=None)
    record = {"key": key, "seed": protocol.seed, "epochs": protocol.epochs,
              "best_epoch": result.best_epoch, "val_accuracy": result.best_accuracy,
              "val_samples": len(splits.val), "history": result.history,
              "train_wall_s": time.perf_counter() - t0,
              "train_cpu_s": time.process_time() - cpu0,
              "checkpoint": str(out_dir / key / "best.pt")}
    # written last: its presence marks a finished run for `--reuse`
    (out_dir / key / TRAIN_RECORD).write_text(json.dumps(record, indent=1))
    return record


def finished_runs(out_dir: Path, keys: list[str], protocol: Protocol) -> dict[str, dict[str, Any]]:
    """The training records in `out_dir` of the `keys` whose run finished under `protocol`'s
    epochs and seed (its `train.json` and `best.pt` are there)."""
    done = {}
    for key in keys:
        path = out_dir / key / TRAIN_RECORD
        if not path.is_file():
            continue
        rec = json.loads(path.read_text())
        if (rec.get("epochs") == protocol.epochs and rec.get("seed") == protocol.seed
                and Path(rec["checkpoint"]).is_file()):
            done[key] = rec
    return done


def _train_worker(key: str, protocol: Protocol, root: str, out_dir: str) -> dict[str, Any]:
    torch.set_num_threads(protocol.threads)
    splits = nmnist_splits(Path(root), protocol)
    return train_key(key, protocol, splits, Path(out_dir))


# --- measurements ------------------------------------------------------------------------

def profiled_peak_bytes(fn: Any) -> int:
    """Peak bytes live while `fn()` runs above those live before it: the maximum of the CPU
    allocator's running total, as torch's profiler records every allocation and free."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
    del out
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"
                  and int(e.get("args", {}).get("Device Type", 0)) == 0), key=lambda e: e["ts"])
    if not mem:
        return 0
    before = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return int(max(e["args"]["Total Allocated"] for e in mem) - before)


def step_peak_bytes(model: Any, frame: torch.Tensor, state: Any) -> tuple[int, int]:
    """Peak bytes of one eager `model.step(frame, state)`, and of its first block's attention
    step alone (on the input and state that step gave it), by `profiled_peak_bytes`."""
    attn = model.blocks[0].attn
    seen: dict[str, Any] = {}
    step = attn.step

    def spy(x: torch.Tensor, st: Any) -> Any:
        seen.setdefault("args", (x, st))
        return step(x, st)

    attn.step = spy  # an instance attribute shadows the method for this one call
    try:
        whole = profiled_peak_bytes(lambda: model.step(frame, state))
    finally:
        del attn.step
    x, st = seen["args"]
    return whole, profiled_peak_bytes(lambda: attn.step(x, st))


def engine_latency(model: Any, seqs: list[torch.Tensor], engine: str, warmup: int,
                   steps: int) -> tuple[float, str]:
    """Median ms of one step of `engine` at batch 1 (`warmup` untimed steps first), cycling
    through the frame sequences `seqs` (each `[T, 1, P, H, W]`, state reset per sequence),
    and the mode that ran."""
    from spikestream.pipeline import make_step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback shows in the mode
        stepper = make_step(model, seqs[0][0], engine)
    times: list[float] = []
    done = 0
    with torch.no_grad():
        while len(times) < steps:
            for frames in seqs:
                state = stepper.init_state(1)
                for frame in frames:
                    t0 = time.perf_counter()
                    _, state = stepper.step(frame, state)
                    if done >= warmup:
                        times.append(time.perf_counter() - t0)
                    done += 1
                if len(times) >= steps:
                    break
    return float(np.median(1000.0 * np.asarray(times))), str(stepper.mode)


def score_key(key: str, checkpoint: Path, test: Dataset, protocol: Protocol,
              engines: tuple[str, ...] = ENGINES) -> dict[str, Any]:
    """Every figure of the table for one trained key (`checkpoint`), on the held-out part."""
    from spikestream.pipeline import load_checkpoint, state_nbytes
    from spikestream.pipeline.evaluation import evaluate
    from spikestream.pipeline.network.energy import energy_report

    torch.set_num_threads(protocol.threads)
    model, extra = load_checkpoint(checkpoint)
    ev = evaluate(model, test, batch_size=64, latency_samples=0, progress=False)
    per_step = ev.accuracy_per_step
    frames = torch.stack([test[i][0] for i in range(len(test))], 1)  # [T, N, P, H, W]
    energy = energy_report(model, frames, protocol.config, "held-out N-MNIST frames")
    seqs = [frames[:, i:i + 1] for i in range(min(8, frames.shape[1]))]
    state = model.init_state(1)
    with torch.no_grad():
        _, state = model.step(seqs[0][0], state)  # warm-up; the measured step is the second
    peak, attn_peak = step_peak_bytes(model, seqs[0][1], state)
    row: dict[str, Any] = {
        "key": key,
        "epoch": extra.get("epoch"),
        "val_accuracy": extra.get("val_accuracy"),
        "test_correct": int(sum(p == t for p, t in zip(ev.predictions, ev.targets,
                                                       strict=True))),
        "test_samples": ev.samples,
        "test_accuracy": ev.accuracy,
        "accuracy_at": {str(t): per_step[t - 1] for t in (1, 2, 4, 8) if t <= len(per_step)},
        "predictions": ev.predictions,
        "targets": ev.targets,
        "parameters": sum(p.numel() for p in model.parameters()),
        "ac_per_step": energy.ac_per_step,
        "mac_per_step": energy.mac_per_step,
        "energy_uj_per_step": energy.energy_uj_per_step,
        "peak_step_bytes": peak,
        "peak_attention_bytes": attn_peak,
        "state_bytes": state_nbytes(model.init_state(1)),
        "latency_ms": {},
        "engine_mode": {},
    }
    for engine in engines:
        ms, mode = engine_latency(model, seqs, engine, protocol.latency_warmup,
                                  protocol.latency_steps)
        row["latency_ms"][engine] = ms
        row["engine_mode"][engine] = mode
    return row


def run_board(keys: list[str], protocol: Protocol, splits: Splits, out_dir: Path, *,
              engines: tuple[str, ...] = ENGINES, jobs: int = 1, root: Path | None = None,
              trained: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Train every key (in `jobs` processes when `root` names the N-MNIST folder) except
    those in `trained` (finished runs of the same protocol), then score them one at a time;
    one row per key, in `keys` order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = dict(trained or {})
    todo = [k for k in keys if k not in trained]
    if jobs > 1 and root is not None and len(todo) > 1:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {k: pool.submit(_train_worker, k, protocol, str(root), str(out_dir))
                       for k in todo}
            trained.update({k: f.result() for k, f in futures.items()})
    else:
        trained.update({k: train_key(k, protocol, splits, out_dir) for k in todo})
    rows = []
    for k in keys:
        t = trained[k]
        row = score_key(k, Path(t["checkpoint"]), splits.test, protocol, engines)
        row.update({"train_wall_s": t["train_wall_s"], "train_cpu_s": t["train_cpu_s"],
                    "val_samples": t["val_samples"], "best_epoch": t["best_epoch"],
                    "history": t["history"], "checkpoint": t["checkpoint"]})
        rows.append(row)
        print(f"{k}: val {row['val_accuracy']:.4f}, held-out {row['test_correct']}/"
              f"{row['test_samples']}, {row['energy_uj_per_step']:.3f} uJ/step, "
              f"peak {row['peak_step_bytes'] / 1024:.0f} KiB, "
              + ", ".join(f"{e} {row['latency_ms'][e]:.2f} ms ({row['engine_mode'][e]})"
                          for e in engines), flush=True)
    return rows


def run_seeds(keys: list[str], protocol: Protocol, splits: Splits, out: Path,
              seeds: list[int], *, engines: tuple[str, ...] = ENGINES, jobs: int = 1,
              root: Path | None = None, reuse: bool = False) -> dict[int, dict[str, Any]]:
    """The board once per training seed (`protocol` with that seed; split and validation
    carve unchanged), each into `out/seed-N/` with its own `leaderboard.json`, written as soon
    as the seed is done. With `reuse`, a seed whose `leaderboard.json` already holds every key
    is taken as it is, and finished (key, seed) runs are scored again without training."""
    results: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        p = replace(protocol, seed=seed)
        seed_dir = out / f"seed-{seed}"
        done = seed_dir / "leaderboard.json"
        if reuse and done.is_file():
            before = json.loads(done.read_text())
            if (before["protocol"]["epochs"] == p.epochs and before["protocol"]["seed"] == seed
                    and [r["key"] for r in before["rows"]] == keys
                    and all(Path(r["checkpoint"]).is_file() for r in before["rows"])):
                print(f"seed {seed}: reusing the finished board in {done}", flush=True)
                results[seed] = before
                continue
        trained = finished_runs(seed_dir, keys, p) if reuse else {}
        print(f"seed {seed}: reusing the trained runs of {', '.join(trained) or 'no key'}",
              flush=True)
        t0 = time.perf_counter()
        rows = run_board(keys, p, splits, seed_dir, engines=engines, jobs=jobs, root=root,
                         trained=trained)
        results[seed] = {"protocol": asdict(p), "data": splits.meta, "rows": rows,
                         "wall_s": time.perf_counter() - t0, "jobs": jobs,
                         "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                         "machine": machine_description()}
        tmp = done.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results[seed], indent=1))
        tmp.replace(done)
        print(f"seed {seed}: {results[seed]['wall_s'] / 60:.1f} min wall; {done}", flush=True)
    return results


def load_seed_results(out: Path, seeds: list[int] | None = None) -> dict[int, dict[str, Any]]:
    """The per-seed `leaderboard.json` files under `out/seed-N/` (only `seeds` when given)."""
    found = {}
    for path in sorted(out.glob("seed-*/leaderboard.json")):
        seed = int(path.parent.name.removeprefix("seed-"))
        if seeds is None or seed in seeds:
            found[seed] = json.loads(path.read_text())
    return dict(sorted(found.items()))


# --- over seeds --------------------------------------------------------------------------

def _std(xs: list[float]) -> float:
    """Sample standard deviation (0 for one value)."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def aggregate(rows_per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per key (in the first seed's order) over the seeds that ran it: mean, sample
    std, min and max of validation and held-out accuracy with each seed's held-out count;
    mean accuracy after 1 / 2 / 4 / 8 steps, synaptic operations, energy, latency and train
    time; parameters, peak memory and state from the first seed's run (they depend on shapes
    only; `shapes_agree` says whether every seed gave the same). `runs` keeps each seed's
    validation and held-out figures and checkpoint."""
    seeds = sorted(rows_per_seed)
    keys: list[str] = []
    for s in seeds:
        keys += [r["key"] for r in rows_per_seed[s] if r["key"] not in keys]
    out = []
    for key in keys:
        runs = {s: r for s in seeds for r in rows_per_seed[s] if r["key"] == key}
        rs = list(runs.values())
        first = rs[0]
        val = [float(r["val_accuracy"]) for r in rs]
        test = [r["test_correct"] / r["test_samples"] for r in rs]
        steps = [t for t in first["accuracy_at"] if all(t in r["accuracy_at"] for r in rs)]
        engines = [e for e in ENGINES if all(e in r["latency_ms"] for r in rs)]
        out.append({
            "key": key,
            "seeds": list(runs),
            "val_accuracy": float(np.mean(val)), "val_std": _std(val),
            "val_min": min(val), "val_max": max(val),
            "test_accuracy": float(np.mean(test)), "test_std": _std(test),
            "test_min": min(test), "test_max": max(test),
            "test_counts": [int(r["test_correct"]) for r in rs],
            "test_samples": int(first["test_samples"]),
            "best_epochs": [r["best_epoch"] for r in rs],
            "accuracy_at": {t: float(np.mean([r["accuracy_at"][t] for r in rs])) for t in steps},
            "parameters": first["parameters"],
            "ac_per_step": float(np.mean([r["ac_per_step"] for r in rs])),
            "mac_per_step": float(np.mean([r["mac_per_step"] for r in rs])),
            "energy_uj_per_step": float(np.mean([r["energy_uj_per_step"] for r in rs])),
            "peak_step_bytes": first["peak_step_bytes"],
            "peak_attention_bytes": first["peak_attention_bytes"],
            "state_bytes": first["state_bytes"],
            "latency_ms": {e: float(np.mean([r["latency_ms"][e] for r in rs])) for e in engines},
            "engine_mode": {e: "/".join(sorted({str(r["engine_mode"][e]) for r in rs}))
                            for e in engines},
            "train_cpu_s": float(np.mean([r["train_cpu_s"] for r in rs])),
            "shapes_agree": all(r[k] == first[k] for r in rs for k in SHAPE_FIGURES),
            "runs": {s: {k: r[k] for k in ("val_accuracy", "best_epoch", "test_correct",
                                           "test_samples", "checkpoint")}
                     for s, r in runs.items()},
        })
    return out


def choose(agg: list[dict[str, Any]]) -> dict[str, Any]:
    """The mechanism picked by mean validation accuracy over seeds (ties: less energy per
    step); the run that would be shipped is its best-validation seed (ties: the lower seed),
    and whether that run's held-out score beats the shipped checkpoint's."""
    best = max(agg, key=lambda r: (r["val_accuracy"], -r["energy_uj_per_step"]))
    seed, run = max(best["runs"].items(), key=lambda sr: (sr[1]["val_accuracy"], -int(sr[0])))
    beats = run["test_correct"] * SHIPPED_SAMPLES > SHIPPED_CORRECT * run["test_samples"]
    return {"key": best["key"], "val_accuracy": best["val_accuracy"], "seed": int(seed),
            "run_val_accuracy": run["val_accuracy"], "test_correct": run["test_correct"],
            "test_samples": run["test_samples"], "checkpoint": run["checkpoint"],
            "beats_shipped": bool(beats)}


# --- report ------------------------------------------------------------------------------

COLUMNS = ("key", "val acc", "held-out acc", "after 1 / 2 / 4 steps", "params", "AC / step",
           "MAC / step", "energy / step", "peak step memory", "peak attention memory", "state",
           "eager", "torchscript", "numba", "train time")


def held_out_cell(r: dict[str, Any]) -> str:
    """Mean held-out accuracy ± the sample std over seeds (points), and each seed's count."""
    counts = ", ".join(str(c) for c in r["test_counts"])
    return (f"**{r['test_accuracy']:.2%}** ± {100 * r['test_std']:.2f} "
            f"({counts} /{r['test_samples']})")


def table_rows(agg: list[dict[str, Any]]) -> list[list[str]]:
    """The Markdown table's cells, one list per key of `aggregate`, in `COLUMNS` order."""
    out = []
    for r in agg:
        at = r["accuracy_at"]
        lat = [f"{r['latency_ms'][e]:.2f} ms" + ("" if r["engine_mode"][e] in
                                                 (e, "frozen", "traced") else
                                                 f" ({r['engine_mode'][e]})")
               if e in r["latency_ms"] else "-" for e in ENGINES]
        out.append([
            f"`{r['key']}`",
            f"{r['val_accuracy']:.2%} ± {100 * r['val_std']:.2f} (epochs "
            + ", ".join(str(e) for e in r["best_epochs"]) + ")",
            held_out_cell(r),
            " / ".join(f"{at[t]:.1%}" for t in ("1", "2", "4") if t in at),
            f"{r['parameters']:,}",
            f"{r['ac_per_step'] / 1e3:,.1f} k",
            f"{r['mac_per_step'] / 1e3:,.1f} k",
            f"{r['energy_uj_per_step']:.3f} µJ",
            f"{r['peak_step_bytes'] / 1024:,.0f} KiB",
            f"{r['peak_attention_bytes'] / 1024:,.1f} KiB",
            f"{r['state_bytes'] / 1024:,.1f} KiB",
            *lat,
            f"{r['train_cpu_s'] / 60:.1f} min",
        ])
    return out


def seed_table(agg: list[dict[str, Any]], seeds: list[int]) -> str:
    """Each seed's validation accuracy (kept epoch) and held-out count, one row per key."""
    head = ("| key | " + " | ".join(f"seed {s}: val (epoch), held out" for s in seeds)
            + " |\n|" + "---|" * (len(seeds) + 1) + "\n")
    body = ""
    for r in agg:
        runs = {int(s): run for s, run in r["runs"].items()}
        cells = [f"{runs[s]['val_accuracy']:.2%} ({runs[s]['best_epoch']}), "
                 f"{runs[s]['test_correct']}/{runs[s]['test_samples']}" if s in runs else "-"
                 for s in seeds]
        body += f"| `{r['key']}` | " + " | ".join(cells) + " |\n"
    return head + body


def markdown(agg: list[dict[str, Any]], protocol: Protocol, seeds: list[int],
             splits_meta: dict[str, Any], when: str, machine: str, verdicts: list[str]) -> str:
    """`docs/leaderboard.md`: the protocol, then the table over seeds, each seed's scores, and
    what they say."""
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(cells) + " |\n" for cells in table_rows(agg))
    n_tr, n_val = splits_meta.get("train_samples"), splits_meta.get("val_samples")
    n_test = splits_meta.get("held_out_samples")
    seed_list = ", ".join(str(s) for s in seeds)
    agree = ("every seed's run gave the same" if all(r.get("shapes_agree", True) for r in agg)
             else "some differ between seeds")
    return f"""# Attention leaderboard (N-MNIST)

Every attention mechanism trained and measured under one protocol, by
`benchmarks/leaderboard.py` ({protocol.epochs} epochs per key, {len(seeds)} training seed(s):
{seed_list}); ![held-out accuracy against energy per step, with the range over
seeds](leaderboard.png).

**Protocol.** Data: the 1,000 real N-MNIST recordings of `nmnist-small/train`, split by the
dataset registry's seeded stratified split (`val_fraction` {protocol.held_out_fraction},
`split_seed` {protocol.split_seed}) into a training part and {n_test} held-out samples; a
validation part of {n_val} samples is carved from the training part by the same stratified
split (seed {protocol.split_seed}), leaving {n_tr} to train on. Each key is trained for
{protocol.epochs} epoch(s) with the shipped `nmnist` checkpoint's settings: config
`{protocol.config}`, 32x32 frames of 8 equal time bins per digit, stem pool
{protocol.stem_pool} (8x8 = 64 tokens, 64 channels, 1 block, 4 heads), batch
{protocol.batch_size}, AdamW at {protocol.lr:g} with a linear warm-up over the first
{protocol.warmup_epochs:g} epoch and a cosine decay, rate loss, `{protocol.augment}`
augmentation, CPU, {protocol.threads} torch thread per run. Each key is trained once per
training seed ({seed_list}): the seed sets the initialisation, the batch order and the
augmentation; the split and the validation part are the same for every seed. The epoch kept
is the one with the best validation accuracy; the held-out part is scored once per run, at the
end, and chose nothing. `statten` runs in its causal mode (so it can stream). The epoch count
keeps each seed's board short on a shared 2-core machine; the shipped `nmnist` checkpoint had
30 epochs on all 801 training samples, so these runs are less trained than it. Machine:
{machine}. Date: {when}.

**Columns.** Figures over seeds: validation and held-out accuracy are the mean ± the sample
standard deviation over seeds (in points), with each seed's kept epoch and each seed's
held-out count (in seed order); held-out accuracy is that of the running decision after all 8
steps (the argmax of the mean logits so far, as `spikestream eval` decides), and after 1, 2
and 4 steps (means); synaptic operations and energy per step (means over seeds) from
`pipeline/network/energy.py` (0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate, 45 nm)
averaged over the held-out samples; parameters, peak memory and state are those of the first
seed's run (they depend on the shapes only, not on the weights; {agree}); peak step
memory: the most bytes live during one eager `model.step` (batch 1) above those live before it
(activations and the new state, not the weights, the old state or the input), from torch's
profiler's record of every CPU allocation and free; peak attention memory: the same for the
first block's attention step alone, on the input and state the step gave it; state: the bytes
of the model's state;
eager / torchscript / numba: the mean over seeds of the median time of one step of each engine
(`make_step`) at batch 1 on one thread, {protocol.latency_steps} timed steps after
{protocol.latency_warmup} warm-up steps, on a 2-core machine shared with other jobs (compare
within a column; a mode in brackets is the engine's fallback); train time: mean CPU time of a
training run. The plot's error bars span the lowest to the highest held-out accuracy over
seeds.

{head}{body}
Each seed's runs (validation accuracy with the kept epoch, held-out count):

{seed_table(agg, seeds)}
""" + "\n".join(f"- {v}" for v in verdicts) + "\n"


def _pts(x: float) -> str:
    return f"{100 * x:.2f}"


def verdicts(agg: list[dict[str, Any]], pick: dict[str, Any], shipped: bool) -> list[str]:
    """Plain sentences: LRF-Dyn against SSA over seeds, and what the board means for
    `nmnist`."""
    by = {r["key"]: r for r in agg}
    out = []
    if "ssa" in by and "lrf_dyn" in by:
        s, d = by["ssa"], by["lrf_dyn"]
        common = [k for k in d["runs"] if k in s["runs"]]
        diffs = [d["runs"][k]["test_correct"] - s["runs"][k]["test_correct"] for k in common]
        wins, ties = sum(x > 0 for x in diffs), sum(x == 0 for x in diffs)
        losses = len(diffs) - wins - ties
        gap = d["test_accuracy"] - s["test_accuracy"]
        spread = max(d["test_std"], s["test_std"])
        acc = "higher than" if gap > 0 else "equal to" if gap == 0 else "lower than"
        if len(common) < 2:
            noise = "one seed gives no spread to compare the difference with"
        elif abs(gap) > spread:
            noise = (f"the difference of {_pts(abs(gap))} points exceeds the seed spread "
                     f"(sample std over seeds: SSA {_pts(s['test_std'])}, LRF-Dyn "
                     f"{_pts(d['test_std'])} points)")
        else:
            noise = (f"the difference of {_pts(abs(gap))} points is within the seed spread "
                     f"(sample std over seeds: SSA {_pts(s['test_std'])}, LRF-Dyn "
                     f"{_pts(d['test_std'])} points), so these seeds do not separate the two")
        mem = d["peak_step_bytes"] / s["peak_step_bytes"] if s["peak_step_bytes"] else float("nan")
        amem = (d["peak_attention_bytes"] / s["peak_attention_bytes"]
                if s["peak_attention_bytes"] else float("nan"))
        out.append(
            f"LRF-Dyn against SSA over {len(common)} seed(s): mean held-out accuracy "
            f"{d['test_accuracy']:.2%} is {acc} SSA's {s['test_accuracy']:.2%} "
            f"({', '.join(str(c) for c in d['test_counts'])} against "
            f"{', '.join(str(c) for c in s['test_counts'])} of {s['test_samples']}); seed by "
            f"seed LRF-Dyn wins {wins}, ties {ties} and loses {losses}; {noise}. Mean "
            f"validation {d['val_accuracy']:.2%} vs {s['val_accuracy']:.2%}; peak step memory "
            f"{d['peak_step_bytes'] / 1024:,.0f} vs {s['peak_step_bytes'] / 1024:,.0f} KiB "
            f"({mem:.2f}x), attention alone {d['peak_attention_bytes'] / 1024:,.1f} vs "
            f"{s['peak_attention_bytes'] / 1024:,.1f} KiB ({amem:.2f}x), state "
            f"{d['state_bytes'] / 1024:,.1f} vs {s['state_bytes'] / 1024:,.1f} KiB; energy "
            f"{d['energy_uj_per_step']:.3f} vs {s['energy_uj_per_step']:.3f} µJ per step. At 64 "
            "tokens the attention's working memory is small beside the stem's maps, so the whole "
            "step's peak is set by the stem (see `benchmarks/attention_memory.py` for N up to "
            "4096, where the N x N matrix dominates); one held-out sample is "
            f"{100 / max(1, s['test_samples']):.2f} points.")
    shipped_acc = SHIPPED_CORRECT / SHIPPED_SAMPLES
    line = (f"Chosen on the validation part by mean over seeds: `{pick['key']}` "
            f"({pick['val_accuracy']:.2%}); its best-validation run (seed {pick['seed']}, "
            f"{pick['run_val_accuracy']:.2%}) holds out {pick['test_correct']}/"
            f"{pick['test_samples']} against the shipped `nmnist` checkpoint's "
            f"{SHIPPED_CORRECT}/{SHIPPED_SAMPLES} ({shipped_acc:.2%}; `ssa`, 30 epochs on all 801 "
            "training samples, last epoch). ")
    if pick["beats_shipped"]:
        line += ("It beats it, so it is shipped as the new `nmnist`." if shipped else
                 "It beats it (not shipped by this run: `--ship`).")
    else:
        line += "It does not beat it, so the shipped `nmnist` checkpoint stays."
    out.append(line)
    return out


def plot(agg: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Mean held-out accuracy against mean energy per step, one labelled point per key, with
    error bars from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in agg:
        x, y = r["energy_uj_per_step"], 100 * r["test_accuracy"]
        err = [[y - 100 * r["test_min"]], [100 * r["test_max"] - y]]
        ax.errorbar([x], [y], yerr=err, fmt="o", ms=6, capsize=3)
        ax.annotate(r["key"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.axhline(100 * SHIPPED_CORRECT / SHIPPED_SAMPLES, color="grey", ls="--", lw=0.8)
    ax.text(ax.get_xlim()[0], 100 * SHIPPED_CORRECT / SHIPPED_SAMPLES,
            " shipped nmnist (ssa, 30 epochs)", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("energy per step (µJ, 45 nm: 0.9 pJ/AC, 4.6 pJ/MAC)")
    ax.set_ylabel("held-out accuracy (%), mean and min-max over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores shared with other jobs, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def ship(row: dict[str, Any]) -> tuple[Path, Path]:
    """Copy the chosen run's `best.pt` and `best.json` to `pipeline/weights/nmnist.*`."""
    src = Path(row["checkpoint"])
    dst = ROOT / "pipeline" / "weights" / "nmnist.pt"
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst, dst.with_suffix(".json")


def board_results(per_seed: dict[int, dict[str, Any]], shipped: bool = False) -> dict[str, Any]:
    """The whole board from each seed's results (`run_seeds`): every seed's rows, the rows
    over seeds, the choice and the verdicts; its wall time is the seeds' sum."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    runs = {s: per_seed[s]["rows"] for s in seeds}
    agg = aggregate(runs)
    pick = choose(agg)
    return {"protocol": first["protocol"], "seeds": seeds, "data": first["data"],
            "runs": {str(s): rows for s, rows in runs.items()}, "aggregate": agg,
            "choice": pick, "verdicts": verdicts(agg, pick, shipped),
            "seed_wall_s": {str(s): per_seed[s]["wall_s"] for s in seeds},
            "wall_s": sum(per_seed[s]["wall_s"] for s in seeds), "jobs": first["jobs"],
            "date": max(per_seed[s]["date"] for s in seeds), "machine": first["machine"]}


def write_docs(results: dict[str, Any], docs: Path) -> tuple[Path, Path]:
    """`leaderboard.md` and `leaderboard.png` in `docs` from a board's `leaderboard.json` (the
    whole board's, or one seed's)."""
    if "runs" not in results:  # one seed's
        results = board_results({int(results["protocol"]["seed"]): results})
    protocol = Protocol(**results["protocol"])
    runs = {int(s): rows for s, rows in results["runs"].items()}
    seeds = sorted(runs)
    agg, meta = aggregate(runs), results["data"]
    md = markdown(agg, protocol, seeds, meta, results["date"], results["machine"],
                  results["verdicts"])
    per_seed = results.get("seed_wall_s", {})
    md += (f"\nThe whole board took {results['wall_s'] / 60:.0f} min of wall time"
           + (" (" + ", ".join(f"seed {s}: {w / 60:.0f} min" for s, w in per_seed.items())
              + ")" if per_seed else "")
           + f", {results['jobs']} training process(es) at once.\n")
    docs.mkdir(parents=True, exist_ok=True)
    tmp = docs / "leaderboard.md.tmp"
    tmp.write_text(md)
    tmp.replace(docs / "leaderboard.md")
    png = plot(agg, docs / "leaderboard.png",
               f"N-MNIST, {protocol.epochs} epochs, {meta['held_out_samples']} held out, "
               f"seeds {', '.join(str(s) for s in seeds)}")
    print(f"wrote {docs / 'leaderboard.md'} and {png}")
    return docs / "leaderboard.md", png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"epochs per key (default {DEFAULT_EPOCHS}; --quick {QUICK_EPOCHS})")
    ap.add_argument("--keys", default=",".join(KEYS), help="comma list of attention keys")
    ap.add_argument("--seeds", default=",".join(str(s) for s in DEFAULT_SEEDS),
                    help="comma list of training seeds (initialisation, batch order, "
                         "augmentation; the split stays fixed)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_EPOCHS} epochs, 50 timed steps; writes nothing under docs/")
    ap.add_argument("--jobs", type=int, default=2, help="training processes at once")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the runs (seed-N/KEY/best.pt, seed-N/leaderboard.json; "
                         "default: a temporary folder)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs",
                    help="where leaderboard.md / .png go")
    ap.add_argument("--ship", action="store_true",
                    help="replace pipeline/weights/nmnist.* when the validation-chosen run "
                         "beats it on the held-out part")
    ap.add_argument("--reuse", action="store_true",
                    help="take the finished seeds in --out as they are and score again, "
                         "without training, the (key, seed) runs that finished under the same "
                         "protocol (their train.json)")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="only write the docs from a finished board: its leaderboard.json (or "
                         "one seed's), or an --out folder, from the seed-N/leaderboard.json of "
                         "the --seeds that finished")
    args = ap.parse_args(argv)
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--seeds takes a comma list of integers, not {args.seeds!r}")
    if not seeds:
        ap.error("--seeds names no seed")
    if args.from_json:
        if args.from_json.is_dir():
            per_seed = load_seed_results(args.from_json, seeds)
            if not per_seed:
                print(f"leaderboard: no seed-N/leaderboard.json of seeds {seeds} in "
                      f"{args.from_json}", file=sys.stderr)
                return 2
            missing = sorted(set(seeds) - set(per_seed))
            if missing:
                print(f"leaderboard: seeds {missing} did not finish; the docs are written from "
                      f"seeds {sorted(per_seed)}", file=sys.stderr)
            results = board_results(per_seed)
        else:
            results = json.loads(args.from_json.read_text())
        write_docs(results, args.docs)
        return 0
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(KEYS))
    if unknown:
        ap.error(f"unknown keys {unknown}; known: {', '.join(KEYS)}")
    root = data_root() / "nmnist-small" / "train"
    if not (root / "labels.txt").is_file():
        print(f"leaderboard: the real N-MNIST recordings are not at {root} (labels.txt and the "
              "1,000 .bs2 files): set SPIKESTREAM_REAL_DATA to the folder holding "
              "nmnist-small/", file=sys.stderr)
        return 3
    protocol = Protocol(epochs=args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS),
                        seed=seeds[0])
    if args.quick:
        protocol.latency_steps = 50
    torch.set_num_threads(protocol.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="leaderboard-"))
    t0 = time.perf_counter()
    splits = nmnist_splits(root, protocol)
    for part in (splits.train, splits.val, splits.test):  # bin once, into the frame cache
        for i in range(len(part)):
            part[i]
    print(f"data: {len(splits.train)} train / {len(splits.val)} validation / "
          f"{len(splits.test)} held out; seeds {seeds}; runs in {out}", flush=True)
    per_seed = run_seeds(keys, protocol, splits, out, seeds, jobs=args.jobs, root=root,
                         reuse=args.reuse)
    results = board_results(per_seed)
    if args.ship and results["choice"]["beats_shipped"] and not args.quick:
        ship(results["choice"])
        results = board_results(per_seed, shipped=True)
    for v in results["verdicts"]:
        print(v)
    print(f"board: {(time.perf_counter() - t0) / 60:.1f} min wall in this process")
    (out / "leaderboard.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'leaderboard.json'}")
    if not args.quick:
        write_docs(results, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
