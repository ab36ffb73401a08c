"""`spikestream eval`: score a checkpoint (a path or a shipped name such as `nmnist`) on a
dataset's held-out part: accuracy, per-class accuracy, a confusion-matrix PNG, an accuracy-
versus-time PNG (the model runs stepwise, as on a live stream) and the mean latency per step.

The dataset, its options and the binning default to what the checkpoint was trained with (its
JSON), so the input is binned exactly as in training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spikestream.cli.train import (
    add_data_arguments,
    build_events_dataset,
    dataset_options,
    default_cache,
    frames_dataset,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", description=__doc__,
                       help="evaluate a checkpoint: accuracy, confusion, accuracy over time")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint .pt, a training --out folder, or a shipped name "
                   "(nmnist, gestures)")
    add_data_arguments(p, train=False)
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which part to score (test: the held-out part)")
    p.add_argument("--limit", type=int, help="score only the first N samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="folder for the PNGs and eval.json "
                   "(default: beside the checkpoint, or ./eval-NAME for shipped weights)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import Subset

    from spikestream.pipeline.checkpoint import load_checkpoint
    from spikestream.pipeline.evaluation import (
        WEIGHTS_DIR,
        evaluate,
        plot_accuracy_over_time,
        plot_confusion,
        resolve_checkpoint,
    )

    path = resolve_checkpoint(args.checkpoint)
    model, extra = load_checkpoint(path, map_location=args.device)
    meta = extra.get("meta", {})
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise ValueError(f"{path}: the checkpoint names no dataset; give --dataset")
    opts = dataset_options(args, meta.get("dataset_options"))
    events_ds = build_events_dataset(name, args.root, args.split == "train", opts, args.download)
    binning = dict(meta.get("binning") or {})
    frame_size = binning.pop("frame_size", None)
    if frame_size is None:
        frame_size = list(model.input_size)
    ds: Any = frames_dataset(events_ds, binning, tuple(frame_size), args.cache or default_cache(),
                             in_memory=False)
    classes = list(meta.get("classes") or getattr(events_ds, "classes", []))
    if len(classes) != model.num_classes:
        classes = [str(c) for c in range(model.num_classes)]
    if args.limit is not None:
        ds = Subset(ds, list(range(min(args.limit, len(ds)))))
    result = evaluate(model, ds, classes=classes, batch_size=args.batch_size,
                      device=torch.device(args.device), progress=not args.json)
    bin_ms = binning.get("time_window", 0) / 1000 or None
    if args.out is not None:
        out = args.out
    elif path.parent.resolve() == WEIGHTS_DIR.resolve():
        out = Path(f"eval-{path.stem}")
    else:
        out = path.parent / f"eval-{path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    cm_png = plot_confusion(result, out / "confusion.png")
    t_png = plot_accuracy_over_time(result, out / "accuracy_over_time.png", bin_ms)
    obj = result.to_json()
    obj.update(checkpoint=str(path), dataset=name, split=args.split,
               confusion_png=str(cm_png), accuracy_over_time_png=str(t_png), bin_ms=bin_ms)
    (out / "eval.json").write_text(json.dumps(obj, indent=2) + "\n")
    if args.json:
        print(json.dumps(obj))
        return 0
    print(f"{name} ({args.split}): accuracy {result.accuracy:.2%} on {result.samples} samples")
    worst = sorted((a, c) for c, a in zip(result.classes, result.per_class_accuracy, strict=True)
                   if a == a)[:3]
    print("lowest per-class: " + ", ".join(f"{c} {a:.0%}" for a, c in worst))
    acc_t = result.accuracy_per_step
    unit = f" x {bin_ms:g} ms" if bin_ms else ""
    print(f"accuracy after step 1 / {len(acc_t) // 2} / {len(acc_t)}{unit}: "
          f"{acc_t[0]:.2%} / {acc_t[len(acc_t) // 2 - 1]:.2%} / {acc_t[-1]:.2%}")
    print(f"mean latency per step (batch 1): {result.step_latency_ms:.2f} ms")
    print(f"wrote {cm_png}, {t_png}, {out / 'eval.json'}")
    return 0
