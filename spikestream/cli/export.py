"""`spikestream export CHECKPOINT OUT.{nir,onnx}`: the model for other tools.

NIR (`.nir`) holds what it can express: the spiking stem (`--part stem`, the default); the
attention blocks and max pooling have no NIR form, and asking for them is refused with the
reason. ONNX (`.onnx`) holds the whole stepwise model: one timestep and the state in, the
logits and the new state out.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from spikestream.pipeline.checkpoint import load_checkpoint, resolve_checkpoint

    out = Path(args.output)
    ext = out.suffix.lower()
    if ext not in (".nir", ".onnx"):
        raise ValueError(f"{out}: output must end in .nir or .onnx")
    model, extra = load_checkpoint(resolve_checkpoint(args.checkpoint))
    if ext == ".onnx":
        from spikestream.pipeline.export_onnx import export_onnx

        keys = export_onnx(model, out)
        print(f"wrote {out}: step graph, frame + {len(keys)} state tensors in, "
              f"logits + {len(keys)} state tensors out")
        return 0
    from spikestream.pipeline.export_nir import write_nir

    dt = args.dt
    if dt is None:
        window = (extra.get("meta", {}).get("binning") or {}).get("time_window")
        dt = window / 1e6 if window else 1e-3
    graph = write_nir(model, out, part=args.part, dt=dt)
    print(f"wrote {out}: {len(graph.nodes)} nodes, {len(graph.edges)} edges ({args.part}, "
          f"dt = {dt:g} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", description=__doc__,
                       help="export a checkpoint to NIR (the stem) or ONNX (the stepwise model)")
    p.add_argument("checkpoint", help="checkpoint .pt, training folder, or shipped name")
    p.add_argument("output", help="OUT.nir or OUT.onnx")
    p.add_argument("--part", choices=("stem", "model"), default="stem",
                   help="NIR: which part (the whole model is refused: attention has no NIR form)")
    p.add_argument("--dt", type=float,
                   help="NIR: seconds per timestep (default: the checkpoint's bin length, "
                   "else 1 ms)")
    p.set_defaults(func=run)
