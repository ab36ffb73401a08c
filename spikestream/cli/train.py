"""`spikestream train`: train the spiking transformer on DVS-Gesture, N-Caltech101, N-MNIST or
synthetic gestures; checkpoints (weights + JSON) go to `--out`. Runs under `torchrun` for DDP.

The dataset table below holds each dataset's defaults (frame size, binning, augmentation); the
binning and dataset options are stored in the checkpoint JSON so that `spikestream eval` and the
streaming side rebuild exactly the same input.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

DATASETS: dict[str, dict[str, Any]] = {
    "nmnist": {"frame_size": (32, 32), "binning": {"n_time_bins": 8}, "augment": "roll,drop"},
    "dvsgesture": {"frame_size": (128, 128), "binning": {"n_event_bins": 16},
                   "augment": "roll,drop"},
    "ncaltech101": {"frame_size": (128, 128), "binning": {"n_event_bins": 16},
                    "augment": "flip,roll,drop"},
    "synthetic": {"frame_size": (32, 32), "binning": {"time_window": 100_000},
                  "augment": "roll,drop"},
}


def add_data_arguments(p: argparse.ArgumentParser, *, train: bool) -> None:
    """Options that choose and shape a dataset (shared by `train` and `eval`)."""
    p.add_argument("--dataset", required=train, choices=sorted(DATASETS),
                   help="dataset (eval: default from the checkpoint)")
    p.add_argument("--root", type=Path, help="dataset folder (not needed for synthetic)")
    p.add_argument("--num-classes", type=int, choices=(10, 11),
                   help="DVS-Gesture / synthetic: 11, or 10 without 'other'")
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
    """Dataset options from the command line, falling back to `stored` (a checkpoint's)."""
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
    }


def build_events_dataset(name: str, root: Path | None, train: bool, opts: dict[str, Any],
                         download: bool = False) -> Any:
    """The event dataset `name`, its training or held-out part."""
    from spikestream.datasets.dvsgesture import DVSGesture
    from spikestream.datasets.ncaltech101 import NCaltech101
    from spikestream.datasets.nmnist import NMNIST

    if name == "synthetic":
        from spikestream.datasets.synthetic import SyntheticGestures

        n = opts["samples_per_class"] if train else max(10, opts["samples_per_class"] // 4)
        return SyntheticGestures(n, "train" if train else "test",
                                 duration_s=opts["clip_seconds"], seed=opts["split_seed"],
                                 num_classes=opts["num_classes"])
    if root is None:
        raise ValueError(f"--root is required for --dataset {name}")
    if name == "nmnist":
        return NMNIST(root, train=train, test_fraction=opts["val_fraction"],
                      seed=opts["split_seed"], download=download)
    if name == "dvsgesture":
        return DVSGesture(root, train=train, num_classes=opts["num_classes"], download=download)
    if name == "ncaltech101":
        return NCaltech101(root, "train" if train else "test", background=opts["background"],
                           test_fraction=opts["val_fraction"], seed=opts["split_seed"],
                           download=download)
    raise ValueError(f"unknown dataset {name!r}")


def default_cache() -> Path:
    """`$SPIKESTREAM_CACHE/frames`, else `~/.cache/spikestream/frames` (never the data folder)."""
    base = os.environ.get("SPIKESTREAM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "spikestream") / "frames"


def frame_params(binning: dict[str, Any], frame_size: tuple[int, int] | None,
                 sensor_size: tuple[int, int, int]) -> dict[str, Any]:
    """`to_frames` keyword arguments for a binning spec and a frame size."""
    params = {k: v for k, v in binning.items() if k in {
        "n_time_bins", "time_window", "event_count", "n_event_bins", "binary", "merge_polarity",
        "start_time", "end_time", "include_incomplete"}}
    if frame_size is not None and tuple(frame_size) != (sensor_size[1], sensor_size[0]):
        params["target_size"] = tuple(int(v) for v in frame_size)
    return params


def frames_dataset(events_ds: Any, binning: dict[str, Any], frame_size: tuple[int, int] | None,
                   cache: Path | None, augment: Any = None, in_memory: bool = True) -> Any:
    """Wrap an event dataset into cached `(frames, label)` samples with a fixed T."""
    from spikestream.datasets.cache import FrameDataset
    from spikestream.pipeline.binning import to_frames

    params = frame_params(binning, frame_size, events_ds.sensor_size)
    if "time_window" in params and "end_time" not in params and hasattr(events_ds, "duration_s"):
        # fixed-length clips: a fixed number of bins, from t = 0 to the clip's end
        params.update(start_time=0, end_time=int(round(events_ds.duration_s * 1e6)))
    return FrameDataset(events_ds, partial(to_frames, dtype=np.float32), params, cache_dir=cache,
                        in_memory=in_memory, augment=augment)


def prepare_frames(ds: Any, label: str, progress: bool = True) -> None:
    """Bin (or load from the cache) every sample once, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task(label, total=len(ds))
        for i in range(len(ds)):
            ds.frames(i)
            bar.advance(task)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the spiking transformer (BPTT, AdamW + cosine)",
                       description=__doc__,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(p, train=True)
    p.add_argument("--config", default="tiny", help="model config name (tiny, small, "
                   "spikformer-2-256)")
    p.add_argument("--attention", default="ssa", help="attention key")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="output folder for checkpoints")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--loss", choices=("rate", "tet"), default="rate")
    p.add_argument("--tet-lambda", type=float, default=0.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--time-bins", type=int, help="T (bins per sample); default per dataset")
    p.add_argument("--bin-by", choices=("time", "events"),
                   help="with --time-bins: equal-duration or equal-event-count bins")
    p.add_argument("--time-window-ms", type=float, help="fixed bin length instead of --time-bins")
    p.add_argument("--frame-size", type=int, nargs=2, metavar=("H", "W"),
                   help="frame / model input size (default per dataset)")
    p.add_argument("--binary", action="store_true", help="binary spike frames instead of counts")
    p.add_argument("--augment", help="comma list of flip, roll, drop, or 'none' "
                   "(default per dataset)")
    p.add_argument("--stem-pool", help="stem down-sampling per stage, e.g. 111 or 11")
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


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

    from spikestream.pipeline.augment import FrameAugment
    from spikestream.pipeline.network.configs import create_model
    from spikestream.pipeline.training import (
        TrainConfig,
        fit,
        setup_distributed,
        shutdown_distributed,
    )

    spec = DATASETS[args.dataset]
    opts = dataset_options(args)
    info = setup_distributed(args.device)
    progress = not args.no_progress and info.main
    t_start = time.perf_counter()
    try:
        train_ev = build_events_dataset(args.dataset, args.root, True, opts, args.download)
        val_ev = build_events_dataset(args.dataset, args.root, False, opts, args.download)
        binning = binning_from_args(args, spec["binning"])
        frame_size = tuple(args.frame_size) if args.frame_size else spec["frame_size"]
        cache = args.cache or default_cache()
        augment = FrameAugment.from_spec(args.augment if args.augment is not None
                                         else spec["augment"])
        train_ds = frames_dataset(train_ev, binning, frame_size, cache,
                                  augment if augment.active else None)
        val_ds = frames_dataset(val_ev, binning, frame_size, cache)
        prepare_frames(train_ds, "bin train", progress)
        prepare_frames(val_ds, "bin held-out", progress)
        x0, _ = train_ds[0]
        overrides: dict[str, Any] = {
            "input_size": tuple(x0.shape[-2:]), "in_channels": int(x0.shape[1]),
            "num_classes": len(train_ev.classes), "time_steps": int(x0.shape[0]),
        }
        if args.stem_pool:
            overrides["stem_pool"] = tuple(c == "1" for c in args.stem_pool)
        for k in ("embed_dim", "depth", "heads"):
            if getattr(args, k) is not None:
                overrides[k] = getattr(args, k)
        torch.manual_seed(args.seed)
        model = create_model(args.config, args.attention, **overrides)
        cfg = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, loss=args.loss,
            tet_lambda=args.tet_lambda, label_smoothing=args.label_smoothing,
            amp=not args.no_amp, seed=args.seed, num_workers=args.workers, device=args.device,
        )
        meta = {
            "dataset": args.dataset,
            "dataset_options": opts,
            "classes": list(train_ev.classes),
            "sensor_size": list(train_ev.sensor_size),
            "binning": {**binning, "frame_size": list(frame_size)},
            "frame_params": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in train_ds.params.items()},
            "augment": repr(augment),
            "train_samples": len(train_ds),
            "val_samples": len(val_ds),
            "command": "spikestream " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        }
        result = fit(model, train_ds, val_ds, cfg, args.out,
                     model_name={"config": args.config, "attention": args.attention},
                     meta=meta, resume=args.resume, progress=progress, info=info,
                     log=(print if info.main else None))
        if info.main:
            summary = {"best_val_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
                       "train_s": round(result.wall_s, 1),
                       "total_s": round(time.perf_counter() - t_start, 1),
                       "checkpoint": str(Path(args.out) / "best.pt")}
            print(json.dumps(summary))
    finally:
        shutdown_distributed()
    return 0
