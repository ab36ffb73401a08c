"""Training: BPTT through the spiking transformer with surrogate gradients, single or DDP.

`fit` runs AdamW with a warm-up + cosine learning-rate schedule on `(frames[T, P, H, W],
label)` datasets; the loss is rate decoding (cross-entropy of the time-averaged logits) or TET
(the mean over timesteps of each step's cross-entropy, optionally with TET's MSE regulariser).
On CUDA it runs in mixed precision (bf16 where supported, else fp16 with a gradient scaler).
Under `torchrun` it trains with DistributedDataParallel (gloo on CPU, nccl on CUDA); only rank 0
writes files. Every epoch it saves `last.pt`/`last.json` (weights + JSON config, loadable with
`weights_only=True`), `best.pt`/`best.json` when validation accuracy improves, and
`train_state.pt` (optimizer, schedule, scaler, history) so that `resume=True` continues exactly
where it stopped, and `metrics.csv` (one row per epoch) and `train.log` (every line it logs).
A Ctrl-C (SIGINT) finishes the batch in flight, saves `train_state.pt` at that batch (with the
position in the epoch and the random state) and `last.pt`, and raises `KeyboardInterrupt`;
`resume=True` continues from that batch. Data order depends only on the seed and the epoch.
After every epoch the BatchNorm running statistics are re-estimated with the epoch's final weights
(`recalibrate_bn`), so validation and the saved checkpoint see the statistics of the weights
they hold.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from spikestream.pipeline.checkpoint import save_checkpoint
from spikestream.pipeline.lamb import Lamb, no_decay_groups
from spikestream.pipeline.recipe import InputRecipe


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (stored in the checkpoint's JSON)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    optimizer: str = "adamw"  # "adamw" or "lamb" (pipeline.lamb; no decay on 1-D parameters)
    cooldown_epochs: int = 0  # epochs at the final learning rate after the cosine
    loss: str = "rate"  # "rate" or "tet"
    tet_lambda: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    amp: bool = True  # used on CUDA only
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    bn_recalibrate_batches: int = 20

    def __post_init__(self) -> None:
        if self.loss not in {"rate", "tet"}:
            raise ValueError(f"loss {self.loss!r} (expected 'rate' or 'tet')")
        if self.optimizer not in {"adamw", "lamb"}:
            raise ValueError(f"optimizer {self.optimizer!r} (expected 'adamw' or 'lamb')")
        if self.cooldown_epochs < 0:
            raise ValueError(f"cooldown_epochs must be >= 0, got {self.cooldown_epochs}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"bad training config {self}")


@dataclass
class TrainResult:
    """What a run produced: per-epoch history and the best validation accuracy."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_accuracy: float = float("nan")
    best_epoch: int = -1
    wall_s: float = 0.0
    out_dir: Path | None = None


def spike_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "rate", *,
               tet_lambda: float = 0.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Loss of `logits[T, B, C]`: `"rate"` = CE(mean_t logits); `"tet"` = mean_t CE(logits_t).

    TET's regulariser `tet_lambda * mean_t MSE(logits_t, 1)` (Deng et al., 2022) is added when
    `tet_lambda > 0`; the TET term is then weighted by `1 - tet_lambda`.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits of shape {tuple(logits.shape)} (expected [T, B, C])")
    logits = logits.float()
    if kind == "rate":
        return F.cross_entropy(logits.mean(0), target, label_smoothing=label_smoothing)
    if kind != "tet":
        raise ValueError(f"loss {kind!r} (expected 'rate' or 'tet')")
    t, b, c = logits.shape
    ce = F.cross_entropy(logits.reshape(t * b, c), target.repeat(t),
                         label_smoothing=label_smoothing)
    if tet_lambda <= 0:
        return ce
    mse = F.mse_loss(logits, torch.ones_like(logits))
    return (1 - tet_lambda) * ce + tet_lambda * mse


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over all parameters, or LAMB with no decay on 1-D parameters (timm's grouping;
    the training loop already clips the global gradient norm at `cfg.grad_clip`)."""
    if cfg.optimizer == "lamb":
        return Lamb(no_decay_groups(model, cfg.weight_decay), lr=cfg.lr, max_grad_norm=None)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine down to `min_ratio` at `total_steps`."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# --- distributed ---------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`"auto"`: the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group `torchrun` describes (env WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                    device=dev)


def shutdown_distributed() -> None:
    """Leave the process group together: a rank that tears gloo down while another is still in
    it can abort that one (SIGABRT, "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _shard(dataset: Dataset, info: DistInfo) -> Dataset:
    if not info.distributed:
        return dataset
    return Subset(dataset, list(range(info.rank, len(dataset), info.world)))  # type: ignore[arg-type]


class _EpochSampler(torch.utils.data.Sampler[int]):
    """Seeded shuffle of the whole set per epoch, then this rank's equal share (padded)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = 0
        self.skip = 0  # samples of this epoch already trained on (a resumed interruption)
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: self.per_rank * self.world - self.n]
        return iter(order[self.rank :: self.world][self.skip:])

    def __len__(self) -> int:
        return self.per_rank - self.skip


# --- the loop ------------------------------------------------------------------------------
def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@contextlib.contextmanager
def _deferred_sigint(enabled: bool = True) -> Iterator[threading.Event]:
    """Inside the block a first SIGINT only sets the event (the loop stops at the next batch
    boundary, where the state is whole); a second one interrupts at once. Not `enabled`
    (DDP, whose ranks cannot stop at the same batch) or outside the main thread, where signal
    handlers cannot be set, SIGINT keeps its handler and the event is never set."""
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    before = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, before)


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch with every logged value, written to a temporary file and renamed."""
    if not history:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _to_time_major(frames: torch.Tensor) -> torch.Tensor:
    """`[B, T, P, H, W]` batch from a DataLoader -> `[T, B, P, H, W]` for the model."""
    return frames.transpose(0, 1).contiguous()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                   max_batches: int, info: DistInfo | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics with the current weights.

    The running averages are exponential averages over batches seen while the weights kept
    changing, so after a short or fast run they lag behind the final weights and eval-mode
    spiking diverges from train mode. As `torch.optim.swa_utils.update_bn` does for SWA, this
    resets them and takes a plain cumulative average over `max_batches` training batches (in
    train mode, without gradients, without augmentation where the dataset offers
    `without_augment()`), averaged over DDP ranks. Returns the batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns or max_batches <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    used = 0
    for frames, _ in loader:
        if used >= max_batches:
            break
        with _autocast(device, amp):
            model(_to_time_major(frames.to(device)))
        used += 1
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
        if info is not None and info.distributed:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf /= info.world
    model.train(was_training)
    return used


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool,
             info: DistInfo | None = None) -> tuple[float, int]:
    """Accuracy of time-averaged logits over `loader` (summed over ranks), and sample count."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    for frames, target in loader:
        frames, target = _to_time_major(frames.to(device)), target.to(device)
        with _autocast(device, amp):
            logits = model(frames)
        correct[0] += (logits.float().mean(0).argmax(-1) == target).sum()
        correct[1] += target.numel()
    if info is not None and info.distributed:
        dist.all_reduce(correct)
    n = int(correct[1].item())
    return (float(correct[0].item()) / n if n else float("nan")), n


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    model_name: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    recipe: InputRecipe | None = None,
    resume: bool = False,
    progress: bool = True,
    info: DistInfo | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train `model` and write checkpoints into `out_dir` (see the module doc).

    The checkpoint JSON holds the model's own config (what rebuilds it) and, as "extra",
    `model_name` (e.g. `{"config": "tiny", "attention": "ssa"}`), the training config, the
    epoch, the validation accuracy and `meta` (dataset, binning, classes, ...) under "meta";
    `recipe`, the input recipe the data was binned by, is saved beside the config.
    """
    info = info or setup_distributed(cfg.device)
    device = info.device
    out = Path(out_dir)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.to(device)
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    sampler = _EpochSampler(len(train_set), cfg.seed, info.rank, info.world)  # type: ignore[arg-type]
    pin = device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                              num_workers=cfg.num_workers, pin_memory=pin, drop_last=False)
    # BatchNorm statistics come from the training data as the model will see it: unaugmented
    calib_set = getattr(train_set, "without_augment", lambda: train_set)()
    calib_loader = DataLoader(_shard(calib_set, info), batch_size=cfg.batch_size, shuffle=False,
                              num_workers=cfg.num_workers, pin_memory=pin)
    val_loader = None
    if val_set is not None and len(val_set) > 0:  # type: ignore[arg-type]
        val_loader = DataLoader(_shard(val_set, info), batch_size=cfg.batch_size, shuffle=False,
                                num_workers=cfg.num_workers, pin_memory=pin)
    steps_per_epoch = len(train_loader)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(
        cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio))
    use_scaler = device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    result = TrainResult(out_dir=out)
    start_epoch, start_step = 0, 0
    partial: list[float] = [0.0, 0.0, 0.0]  # loss sum, samples, correct of a started epoch
    rng_state: torch.Tensor | None = None
    state_path = out / "train_state.pt"
    log_file = open(out / "train.log", "a") if info.main else None  # noqa: SIM115

    def say(line: str) -> None:
        if log_file is not None:
            log_file.write(line + "\n")
            log_file.flush()
        if log and info.main:
            log(line)

    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"]) + 1
        start_step = int(state.get("step", 0))
        if start_step:
            partial = [float(v) for v in state["partial"]]
            rng_state = state["rng"]
        result.history = json.loads(state["history"])
        result.best_accuracy = float(state["best_accuracy"])
        result.best_epoch = int(state["best_epoch"])
        say(f"resumed from {state_path} at epoch {start_epoch + 1}"
            + (f", batch {start_step + 1}" if start_step else ""))
    elif resume:
        say(f"nothing to resume in {out}: starting afresh")

    def save_state(epoch_done: int, step: int = 0, sums: list[float] | None = None) -> None:
        """`train_state.pt` after `epoch_done` (0-based; -1 none) and `step` more batches."""
        torch.save({
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch_done,
            "step": step,
            "partial": torch.tensor(sums or [0.0, 0.0, 0.0], dtype=torch.float64),
            "rng": torch.get_rng_state(),
            "history": json.dumps(result.history),
            "best_accuracy": result.best_accuracy,
            "best_epoch": result.best_epoch,
        }, state_path)

    def checkpoint_json(epoch: int, acc: float) -> dict[str, Any]:
        return {
            "model_name": model_name,
            "train": asdict(cfg),
            "epoch": epoch + 1,
            "val_accuracy": acc,
            "world_size": info.world,
            "meta": meta or {},
        }

    t0 = time.perf_counter()
    with _progress(progress and info.main) as bar, \
            _deferred_sigint(not info.distributed) as stop:
        total_epochs = cfg.epochs + cfg.cooldown_epochs  # the schedule holds its end value
        overall = bar.add_task("all epochs", info="", total=(total_epochs - start_epoch)
                               * steps_per_epoch - start_step)
        for epoch in range(start_epoch, total_epochs):
            skip = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, skip * cfg.batch_size)
            if skip and rng_state is not None:
                torch.set_rng_state(rng_state)  # as it was at the interrupted batch
            else:
                torch.manual_seed(cfg.seed * 1_000_003 + epoch * 101 + info.rank)
            net.train()
            task = bar.add_task(f"epoch {epoch + 1}/{total_epochs}", total=steps_per_epoch,
                                completed=skip, info="")
            loss_sum, seen, correct = (partial[0], int(partial[1]), int(partial[2])) if skip \
                else (0.0, 0, 0)
            step = skip
            for frames, target in train_loader:
                frames = _to_time_major(frames.to(device, non_blocking=True))
                target = target.to(device, non_blocking=True)
                with _autocast(device, cfg.amp):
                    logits = net(frames)
                loss = spike_loss(logits, target, cfg.loss, tet_lambda=cfg.tet_lambda,
                                  label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                b = target.numel()
                loss_sum += float(loss.detach()) * b
                seen += b
                correct += int((logits.detach().float().mean(0).argmax(-1) == target).sum())
                step += 1
                bar.update(task, advance=1,
                           info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
                bar.update(overall, advance=1)
                if stop.is_set():
                    if info.main:
                        save_state(epoch - 1, step, [loss_sum, seen, correct])
                        save_checkpoint(out / "last.pt", model, {
                            **checkpoint_json(epoch - 1, float("nan")),
                            "interrupted": {"epoch": epoch + 1, "batch": step}}, recipe)
                    say(f"interrupted in epoch {epoch + 1} after batch {step}/"
                        f"{steps_per_epoch}: {state_path} saved; continue with --resume")
                    if log_file is not None:
                        log_file.close()
                    raise KeyboardInterrupt
            recalibrate_bn(model, calib_loader, device, cfg.amp, cfg.bn_recalibrate_batches, info)
            stats = torch.tensor([loss_sum, seen, correct], dtype=torch.float64, device=device)
            if info.distributed:
                dist.all_reduce(stats)
            val_acc, val_n = (validate(net, val_loader, device, cfg.amp, info)
                              if val_loader is not None else (float("nan"), 0))
            row = {
                "epoch": epoch + 1,
                "loss": float(stats[0] / stats[1]),
                "train_accuracy": float(stats[2] / stats[1]),
                "val_accuracy": val_acc,
                "val_samples": val_n,
                "lr": float(opt.param_groups[0]["lr"]),
                "elapsed_s": time.perf_counter() - t0,
            }
            result.history.append(row)
            bar.update(task, info=f"loss {row['loss']:.3f} acc {row['train_accuracy']:.3f} "
                                  f"val {val_acc:.3f}")
            improved = not math.isnan(val_acc) and not (val_acc <= result.best_accuracy)
            if val_loader is None or improved:
                result.best_accuracy, result.best_epoch = val_acc, epoch + 1
            if info.main:
                save_checkpoint(out / "last.pt", model, checkpoint_json(epoch, val_acc),
                                recipe)
                if val_loader is None or improved:
                    save_checkpoint(out / "best.pt", model, checkpoint_json(epoch, val_acc),
                                    recipe)
                save_state(epoch)
                write_metrics_csv(out / "metrics.csv", result.history)
            say(json.dumps(row))
    if log_file is not None:
        log_file.close()
    result.wall_s = time.perf_counter() - t0
    if info.distributed:
        dist.barrier()
    return result
