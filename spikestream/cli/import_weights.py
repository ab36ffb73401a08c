"""`spikestream import-weights --from {spikformer,sdt,statten} IN.pth OUT_DIR`: an official
model's weights as a spikestream checkpoint (`OUT_DIR/best.pt` + `best.json`).

The weights file is read with `torch.load(weights_only=True)` (nothing is unpickled beyond
tensors and plain containers); a training checkpoint holding other objects is refused. The
official constructor's arguments (official names) come from `--kwargs JSON` over the values
the papers' training scripts use. The input recipe stored beside the weights bins each sample
into T equal-count bins (spikingjelly's `split_by="number"`, as the papers' loaders do) at the
model's input size; `--sensor W H` is the recording's sensor (default per source).
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

from spikestream.cli.model_args import attention_args

#: the sensor and dataset each official model was trained on
DATASETS = {"spikformer": ((128, 128), "dvsgesture"), "sdt": ((128, 128), "dvsgesture"),
            "statten": ((240, 180), "ncaltech101")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-weights", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="an official Spikformer / SDT / STAtten state dict as a checkpoint")
    p.add_argument("--from", dest="source", required=True, choices=sorted(DATASETS),
                   help="which official model the weights belong to")
    p.add_argument("weights", type=Path, help="the official state dict (.pth)")
    p.add_argument("out", type=Path, help="output folder (best.pt and best.json)")
    p.add_argument("--kwargs", type=attention_args, default=None, metavar="JSON",
                   help="the official constructor's keyword arguments, e.g. "
                        "'{\"num_classes\": 10}'")
    p.add_argument("--sensor", type=int, nargs=2, metavar=("W", "H"),
                   help="sensor size of the recordings (default: DVS128 for spikformer and "
                        "sdt, the 240x180 N-Caltech101 canvas for statten)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from spikestream.pipeline import import_reference, save_checkpoint
    from spikestream.pipeline.checkpoint import CheckpointError
    from spikestream.pipeline.recipe import InputRecipe

    if not args.weights.is_file():
        raise FileNotFoundError(f"no weights file {args.weights}")
    try:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{args.weights}: not loadable as plain weights ({first}); save "
                              "the model's state_dict alone") from None
    kwargs = args.kwargs or {}
    try:
        model = import_reference(args.source, state, **kwargs)
    except ValueError as e:
        raise CheckpointError(f"{args.weights}: {e}") from None
    (sw, sh), dataset = DATASETS[args.source]
    if args.sensor:
        sw, sh = args.sensor
    recipe = InputRecipe((sw, sh, model.in_channels), model.input_size, "n_event_bins",
                         model.time_steps)
    meta = {"imported_from": args.source, "official_kwargs": kwargs,
            "weights": str(args.weights), "dataset": dataset}
    pt, js = save_checkpoint(args.out / "best.pt", model, extra={"meta": meta}, recipe=recipe)
    result = {"checkpoint": str(pt), "config": str(js), "source": args.source,
              "parameters": sum(p.numel() for p in model.parameters()),
              "tokens": model.num_tokens, "time_steps": model.time_steps}
    print(json.dumps(result) if args.json else
          f"imported {args.source} ({result['parameters']:,} parameters, "
          f"{model.num_tokens} tokens, T = {model.time_steps}) into {pt}")
    return 0
