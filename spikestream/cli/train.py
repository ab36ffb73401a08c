"""`spikestream train`: train the spiking transformer on DVS-Gesture, N-Caltech101, N-MNIST or
synthetic gestures; checkpoints (weights + JSON) go to `--out`, with `metrics.csv` (a row per
epoch) and `train.log`. Ctrl-C saves the run at the current batch: `--resume` continues it.
Runs under `torchrun` for DDP.

Each dataset's defaults (frame size, binning, augmentation) come from the dataset registry; the
input recipe (sensor, frame size, binning and its live equivalent, filters) and the dataset
options are stored in the checkpoint JSON so that every command rebuilds exactly the same input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from spikestream.cli.model_args import add_attention_args


def recipe_names() -> list[str]:
    """The shipped training recipes, found without importing the pipeline (and torch)."""
    spec = importlib.util.find_spec("spikestream.pipeline")
    folders = spec.submodule_search_locations if spec is not None else None
    return sorted(p.stem for f in (folders or []) for p in Path(f, "recipes").glob("*.json"))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help lines that name a default only where there is one to name (no "(default: None)",
    nor a second default where the text already gives it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def add_data_arguments(p: argparse.ArgumentParser, *, train: bool) -> None:
    """Options that choose and shape a dataset (shared by `train` and `eval`)."""
    from spikestream.datasets.registry import dataset_names

    def dataset(name: str) -> str:
        if name in dataset_names() or name.startswith("tonic:") and len(name) > 6:
            return name
        raise argparse.ArgumentTypeError(
            f"unknown dataset {name!r}: one of {', '.join(dataset_names())} or tonic:NAME")

    p.add_argument("--dataset", required=train, type=dataset,
                   help=f"{', '.join(dataset_names())}, or tonic:NAME for any tonic.datasets "
                        "class (eval: default from the checkpoint)")
    p.add_argument("--root", type=Path, help="dataset folder (not needed for synthetic)")
    p.add_argument("--num-classes", type=int, choices=(10, 11),
                   help="DVS-Gesture / synthetic: 11, or 10 without 'other'")
    p.add_argument("--gesture-layout", choices=("auto", "tonic", "ibm"),
                   help="DVS-Gesture: which release to read: ibm (the papers' split, "
                        "1176 train / 288 test), tonic (Tonic's copy, 1077 / 264) or auto "
                        "(whichever is present, Tonic's first; the default)")
    p.add_argument("--background", action="store_true",
                   help="N-Caltech101: keep BACKGROUND_Google as class 101")
    p.add_argument("--val-fraction", type=float,
                   help="held-out fraction where a dataset has no test split (default 0.2)")
    p.add_argument("--split-seed", type=int, help="seed of that split (default 0)")
    p.add_argument("--samples-per-class", type=int,
                   help="synthetic: training clips per class (test: a quarter of it, min 10)")
    p.add_argument("--clip-seconds", type=float, help="synthetic: clip duration (default 1.5)")
    p.add_argument("--cache", type=Path, help="folder for cached frames (default "
                   "$SPIKESTREAM_CACHE/frames or ~/.cache/spikestream/frames)")
    p.add_argument("--download", action="store_true",
                   help="download a missing dataset (with a timeout and a checksum)")


def dataset_options(args: argparse.Namespace, stored: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Dataset options from the command line, falling back to `stored` (a checkpoint's) and
    then to the defaults; every option of every dataset (`create_dataset` picks its own)."""
    stored = stored or {}

    def pick(name: str, default: Any) -> Any:
        v = getattr(args, name, None)
        return v if v is not None else stored.get(name, default)

    return {
        "num_classes": pick("num_classes", 11),
        "background": bool(getattr(args, "background", False) or stored.get("background")),
        "val_fraction": pick("val_fraction", 0.2),
        "split_seed": pick("split_seed", 0),
        "samples_per_class": pick("samples_per_class", 40),
        "clip_seconds": pick("clip_seconds", 1.5),
        "layout": getattr(args, "gesture_layout", None) or stored.get("layout", "auto"),
    }


def own_options(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The options dataset `name` reads, of `opts` (what a checkpoint stores)."""
    from spikestream.datasets.registry import get_dataset_entry

    return {k: v for k, v in opts.items() if k in get_dataset_entry(name).options}


def limited(ds: Any, limit: int | None, seed: int) -> Any:
    """`ds`, or at most `limit` of its samples drawn evenly from the classes."""
    if limit is None or limit >= len(ds):
        return ds
    from spikestream.datasets.registry import SampleSubset
    from spikestream.pipeline.evaluation import stratified_subset

    return SampleSubset(ds, stratified_subset(list(ds.targets), limit, seed))


def prepare_frames(ds: Any, label: str, progress: bool = True) -> None:
    """Bin (or load from the cache) every sample once, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task(label, total=len(ds))
        for i in range(len(ds)):
            ds.frames(i)
            bar.advance(task)


def split_description(events_ds: Any, n_train: int, n_test: int) -> str:
    """Which split a run used, for every report: `"1176 train / 288 test (ibm layout)"`."""
    layout = getattr(events_ds, "layout", None)
    return f"{n_train} train / {n_test} test" + (f" ({layout} layout)" if layout else "")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the spiking transformer (BPTT, AdamW + cosine)",
                       description=__doc__, formatter_class=HelpFormatter)
    add_data_arguments(p, train=False)
    p.add_argument("--limit", type=int, metavar="N",
                   help="at most N samples of each part, drawn evenly from the classes (seeded "
                        "by --split-seed)")
    p.add_argument("--recipe", help="a paper's training recipe (name or JSON file): every "
                   "option not given on the command line comes from it; shipped: "
                   + ", ".join(recipe_names()))
    p.add_argument("--config", help="model config name (tiny, small, spikformer-2-256, "
                   "sdt-2-256, statten-2-256; default tiny)")
    p.add_argument("--attention", default=None,
                   help="attention key: ssa, sdsa, statten, a2os2a, sssa, lrf_ssa, lrf_dyn "
                        "(default: the config's own, else ssa)")
    add_attention_args(p, what="over the config's defaults for that key")
    p.add_argument("--epochs", type=int,
                   help="passes over the training part in the cosine schedule (default 10)")
    p.add_argument("--cooldown-epochs", type=int,
                   help="epochs at the final learning rate after them (default 0)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: checkpoints, train_state.pt, metrics.csv, train.log")
    p.add_argument("--batch-size", type=int, help="samples per step (default 16)")
    p.add_argument("--optimizer", choices=("adamw", "lamb"), help="default adamw")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="default 0.01")
    p.add_argument("--warmup-epochs", type=float,
                   help="linear warm-up before the cosine decay, in epochs (default 1)")
    p.add_argument("--min-lr-ratio", type=float,
                   help="where the cosine ends, as a fraction of --lr (default 0.01)")
    p.add_argument("--loss", choices=("rate", "tet"),
                   help="rate: cross-entropy of the time-averaged logits; tet: mean of each "
                        "step's cross-entropy (default rate)")
    p.add_argument("--tet-lambda", type=float,
                   help="weight of TET's MSE regulariser, with --loss tet (default 0)")
    p.add_argument("--label-smoothing", type=float,
                   help="label smoothing of the cross-entropy (default 0)")
    p.add_argument("--time-bins", type=int, help="T (bins per sample); default per dataset")
    p.add_argument("--bin-by", choices=("time", "events"),
                   help="with --time-bins: equal-duration or equal-event-count bins")
    p.add_argument("--time-window-ms", type=float, help="fixed bin length instead of --time-bins")
    p.add_argument("--frame-size", type=int, nargs=2, metavar=("H", "W"),
                   help="frame / model input size (default per dataset)")
    p.add_argument("--binary", action="store_true", help="binary spike frames instead of counts")
    p.add_argument("--augment", help="comma list of flip, roll, drop, or 'none' "
                   "(default per dataset)")
    p.add_argument("--stem-pool", help="stem down-sampling per stage, e.g. 111 or 11 "
                                       "(default per config)")
    p.add_argument("--layout", choices=("spikestream", "spikformer", "ms"),
                   help="block layout (default: the config's; see docs/papers.md)")
    p.add_argument("--embed-dim", type=int, help="channels of the blocks (default per config)")
    p.add_argument("--depth", type=int, help="number of blocks (default per config)")
    p.add_argument("--heads", type=int, help="attention heads (default per config)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/train_state.pt (after an epoch, or at the batch "
                        "where Ctrl-C stopped it)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


#: what `train` uses for an option that neither the command line nor a recipe sets
TRAIN_DEFAULTS: dict[str, Any] = {
    "config": "tiny", "epochs": 10, "cooldown_epochs": 0, "batch_size": 16,
    "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 1.0,
    "min_lr_ratio": 0.01,
    "loss": "rate", "tet_lambda": 0.0, "label_smoothing": 0.0,
}


def apply_recipe(args: argparse.Namespace) -> dict[str, Any] | None:
    """Fill the options the command line left unset from `--recipe`, then from
    `TRAIN_DEFAULTS`; returns the recipe (or None)."""
    from spikestream.pipeline.train_recipes import load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else None
    if recipe is not None:
        for key, entry in recipe["settings"].items():
            if not hasattr(args, key):
                raise ValueError(f"recipe {recipe['name']}: {key!r} is not a train option")
            if getattr(args, key) is None:
                value = entry["value"]
                setattr(args, key, tuple(value) if isinstance(value, list) else value)
    for key, value in TRAIN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dataset is None:
        raise ValueError("give --dataset (or a --recipe that names one)")
    return recipe


def binning_from_args(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    if args.time_window_ms is not None:
        b: dict[str, Any] = {"time_window": int(round(args.time_window_ms * 1000))}
    elif args.time_bins is not None:
        by = args.bin_by or ("events" if "n_event_bins" in defaults else "time")
        b = {"n_event_bins" if by == "events" else "n_time_bins": args.time_bins}
    else:
        b = dict(defaults)
    if args.binary:
        b["binary"] = True
    return b


def run(args: argparse.Namespace) -> int:
    import torch

    from spikestream.datasets.registry import create_dataset, get_dataset_entry
    from spikestream.pipeline import create_model
    from spikestream.pipeline.augment import FrameAugment
    from spikestream.pipeline.recipe import default_cache, frames_dataset, recipe_for_dataset
    from spikestream.pipeline.training import (
        TrainConfig,
        fit,
        setup_distributed,
        shutdown_distributed,
    )

    recipe_used = apply_recipe(args)
    spec = get_dataset_entry(args.dataset)
    opts = dataset_options(args)
    info = setup_distributed(args.device)
    progress = not args.no_progress and info.main
    t_start = time.perf_counter()
    try:
        train_ev = create_dataset(args.dataset, args.root, part="train",
                                  download=args.download, **opts)
        val_ev = create_dataset(args.dataset, args.root, part="test", download=args.download,
                                **opts)
        train_ev = limited(train_ev, args.limit, opts["split_seed"])
        val_ev = limited(val_ev, args.limit, opts["split_seed"])
        binning = binning_from_args(args, spec.binning)
        frame_size = tuple(args.frame_size) if args.frame_size else spec.frame_size
        cache = args.cache or default_cache()
        augment = FrameAugment.from_spec(args.augment if args.augment is not None
                                         else spec.augment)
        recipe = recipe_for_dataset(train_ev, binning, frame_size)
        train_ds = frames_dataset(train_ev, recipe, cache, augment if augment.active else None)
        val_ds = frames_dataset(val_ev, recipe, cache)
        prepare_frames(train_ds, "bin train", progress)
        prepare_frames(val_ds, "bin held-out", progress)
        x0, _ = train_ds[0]
        overrides: dict[str, Any] = {
            "input_size": tuple(x0.shape[-2:]), "in_channels": int(x0.shape[1]),
            "num_classes": len(train_ev.classes), "time_steps": int(x0.shape[0]),
        }
        if args.stem_pool:
            overrides["stem_pool"] = tuple(c == "1" for c in args.stem_pool)
        for k in ("embed_dim", "depth", "heads", "layout"):
            if getattr(args, k) is not None:
                overrides[k] = getattr(args, k)
        torch.manual_seed(args.seed)
        model = create_model(args.config, args.attention, args.attention_args, **overrides)
        cfg = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
            min_lr_ratio=args.min_lr_ratio, loss=args.loss,
            tet_lambda=args.tet_lambda, label_smoothing=args.label_smoothing,
            amp=not args.no_amp, seed=args.seed, num_workers=args.workers, device=args.device,
            optimizer=args.optimizer, cooldown_epochs=args.cooldown_epochs,
        )
        meta = {
            "dataset": args.dataset,
            "dataset_options": own_options(args.dataset, opts),
            "classes": list(train_ev.classes),
            "sensor_size": list(train_ev.sensor_size),
            "binning": {**binning, "frame_size": list(frame_size)},
            "frame_params": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in train_ds.params.items()},
            "augment": repr(augment),
            "limit": args.limit,
            "train_samples": len(train_ds),
            "val_samples": len(val_ds),
            "split": split_description(train_ev, len(train_ds), len(val_ds)),
            "command": "spikestream " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "training_recipe": recipe_used,
        }
        if info.main:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            with open(Path(args.out) / "train.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {meta['command']}\n")
        result = fit(model, train_ds, val_ds, cfg, args.out,
                     model_name={"config": args.config, "attention": model.attention_key},
                     meta=meta, recipe=recipe, resume=args.resume, progress=progress, info=info,
                     log=(print if info.main else None))
        if info.main:
            summary = {"best_val_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
                       "train_s": round(result.wall_s, 1),
                       "total_s": round(time.perf_counter() - t_start, 1),
                       "checkpoint": str(Path(args.out) / "best.pt")}
            print(json.dumps(summary))
            with open(Path(args.out) / "train.log", "a") as f:
                f.write(json.dumps(summary) + "\n")
    finally:
        shutdown_distributed()
    return 0
