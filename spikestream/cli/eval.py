"""`spikestream eval`: score a checkpoint (a path or a shipped name such as `nmnist`) on a
dataset's held-out part: accuracy, per-class accuracy, a confusion-matrix PNG, an accuracy-
versus-time PNG (the model runs stepwise, as on a live stream) and the mean latency per step.

The dataset and its options default to what the checkpoint was trained with, and the input is
binned by the checkpoint's input recipe, exactly as in training. `eval.json` lists every file
scored with its label and prediction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spikestream.cli.model_args import add_attention_args
from spikestream.cli.train import add_data_arguments, dataset_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", description=__doc__,
                       help="evaluate a checkpoint: accuracy, confusion, accuracy over time")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint .pt, a training --out folder, or a shipped name "
                   "(nmnist, gestures)")
    add_data_arguments(p, train=False)
    add_attention_args(p, what="over the checkpoint's stored options, e.g. STAtten's mode")
    p.add_argument("--split", choices=("test", "train", "all"), default="test",
                   help="which part to score: test (the held-out part), train, or all "
                   "(every sample; e.g. a folder held out as a whole)")
    p.add_argument("--limit", type=int, help="score N samples drawn evenly from every class "
                   "(seeded by --split-seed)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: the latency of a streaming step, as `stream` runs)")
    p.add_argument("--out", type=Path, help="folder for the PNGs and eval.json "
                   "(default: beside the checkpoint, or ./eval-NAME for shipped weights)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import Subset

    from spikestream.datasets.registry import create_dataset
    from spikestream.pipeline import load_for_inference
    from spikestream.pipeline.checkpoint import WEIGHTS_DIR
    from spikestream.pipeline.evaluation import (
        evaluate,
        plot_accuracy_over_time,
        plot_confusion,
        stratified_subset,
        time_axis,
    )
    from spikestream.pipeline.recipe import default_cache, frames_dataset

    if args.val_fraction is not None and not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction {args.val_fraction}: must be in [0, 1); to score "
                         "every file of a folder use --split all")
    torch.set_num_threads(max(1, args.threads))
    ck = load_for_inference(args.checkpoint, map_location=args.device,
                            attention_kwargs=args.attention_args)
    path, model, recipe = ck.path, ck.model, ck.recipe
    meta = ck.extra.get("meta", {})
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise ValueError(f"{path}: the checkpoint names no dataset; give --dataset")
    opts = dataset_options(args, meta.get("dataset_options"))
    events_ds = create_dataset(name, args.root, part=args.split, download=args.download, **opts)
    ds: Any = frames_dataset(events_ds, recipe, args.cache or default_cache(), in_memory=False)
    classes = ck.classes or list(getattr(events_ds, "classes", []))
    if len(classes) != model.num_classes:
        classes = [str(c) for c in range(model.num_classes)]
    indices = list(range(len(ds)))
    if args.limit is not None:
        indices = stratified_subset(list(events_ds.targets), args.limit, opts["split_seed"])
        ds = Subset(ds, indices)
    result = evaluate(model, ds, classes=classes, batch_size=args.batch_size,
                      device=torch.device(args.device), progress=not args.json)
    files = getattr(events_ds, "files", None)
    scored = [{"index": i, "file": str(files[i]) if files is not None else None,
               "label": int(y), "predicted": int(p)}
              for i, y, p in zip(indices, result.targets, result.predictions, strict=True)]
    axis = time_axis(recipe)
    bin_ms = axis.bin_ms
    if args.out is not None:
        out = args.out
    elif path.parent.resolve() == WEIGHTS_DIR.resolve():
        out = Path(f"eval-{path.stem}")
    else:
        out = path.parent / f"eval-{path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    title = f"{path.name} on {name} ({args.split}" + (f", {len(indices)} drawn" if args.limit
                                                       else "") + ")"
    cm_png = plot_confusion(result, out / "confusion.png", title)
    t_png = plot_accuracy_over_time(result, out / "accuracy_over_time.png", axis, title)
    obj = result.to_json()
    del obj["predictions"], obj["targets"]
    obj.update(checkpoint=str(path), dataset=name, split=args.split, limit=args.limit,
               split_sizes=meta.get("split"), dataset_layout=getattr(events_ds, "layout", None),
               recipe=recipe.to_dict(), attention=model.attention_key,
               attention_kwargs=model.config["attention_kwargs"], confusion_png=str(cm_png),
               accuracy_over_time_png=str(t_png), bin_ms=bin_ms, time_axis=axis.description,
               scored=scored)
    (out / "eval.json").write_text(json.dumps(obj, indent=2) + "\n")
    if args.json:
        print(json.dumps(obj))
        return 0
    how = f"{len(indices)} of {len(events_ds)}" + (" (stratified)" if args.limit else "")
    if getattr(events_ds, "layout", None):
        how += f", {events_ds.layout} layout"
    print(f"{name} ({args.split}, {how} samples): accuracy {result.accuracy:.2%}")
    worst = sorted((a, c) for c, a in zip(result.classes, result.per_class_accuracy, strict=True)
                   if a == a)[:3]
    print("lowest per-class: " + ", ".join(f"{c} {a:.0%}" for a, c in worst))
    acc_t = result.accuracy_per_step
    unit = f" x {bin_ms:g} ms" if bin_ms else ""
    print(f"accuracy after step 1 / {len(acc_t) // 2} / {len(acc_t)}{unit}: "
          f"{acc_t[0]:.2%} / {acc_t[len(acc_t) // 2 - 1]:.2%} / {acc_t[-1]:.2%}")
    print(f"latency per step (batch 1, {args.threads} thread(s), {result.latency_steps} steps "
          f"after warm-up): p50 {result.step_latency_ms:.2f} ms, "
          f"p99 {result.step_latency_p99_ms:.2f} ms")
    print(f"wrote {cm_png}, {t_png}, {out / 'eval.json'} (lists the {len(scored)} files scored)")
    return 0
