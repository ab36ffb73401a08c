"""`spikestream demo`: the simulated camera performs gestures; the shipped weights classify them.

Each gesture is scored by the mean logits of the steps whose bins end inside it (what the
model was trained on: the rate over a clip); the summary says how many were right, and the
step latency.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from spikestream.cli.stream import (
    add_engine_flag,
    describe_start,
    prepare,
    print_summary,
    run_with_view,
)
from spikestream.pipeline.streaming import StepInfo


def score_segments(segments: list[tuple[int, int, int]],
                   steps: list[tuple[int, np.ndarray]]) -> list[dict]:
    """Per gesture `(t0, t1, label)`: the argmax of the mean logits of steps ending in it."""
    out = []
    for t0, t1, label in segments:
        z = [logits for t, logits in steps if t0 < t <= t1]
        pred = int(np.argmax(np.mean(z, axis=0))) if z else None
        out.append({"t0_us": t0, "t1_us": t1, "label": label, "predicted": pred,
                    "steps": len(z), "correct": pred == label})
    return out


def run(args: argparse.Namespace) -> int:
    from spikestream.pipeline import load_for_inference

    classes = load_for_inference(args.checkpoint).classes
    n_classes = len(classes) if classes else 11
    rng = np.random.default_rng(args.seed)
    sequence = [int(g) for g in rng.permutation(n_classes)[:args.gestures]]
    spec = "sim:" + ",".join(str(g) for g in sequence)
    prep = prepare(args.checkpoint, spec, speed=args.speed,
                   realtime=False, bin_ms=None, engine=args.engine, threads=args.threads,
                   queue_size=8, threshold=0.9, seconds=None, seed=args.seed,
                   duration_s=args.duration)
    source = prep.source
    steps: list[tuple[int, np.ndarray]] = []

    def keep(info: StepInfo) -> None:
        if info.t_us is not None:
            steps.append((info.t_us, info.logits.copy()))

    if not args.json:
        print(f"spikestream demo: {len(sequence)} gestures of {args.duration:g} s on a "
              f"simulated DVS128; {describe_start(prep)}")
    result = run_with_view(prep, json_out=args.json, on_step=keep)
    scored = score_segments(source.segments, steps)
    names = classes or [str(i) for i in range(11)]
    right = sum(s["correct"] for s in scored)
    if args.json:
        print(json.dumps({"gestures": len(scored), "correct": right, "segments": scored,
                          "recipe": prep.ck.recipe.to_dict(),
                          **{k: v for k, v in result.as_dict().items() if k != "decisions"}},
                         default=str))
        return 0
    for s in scored:
        pred = names[s["predicted"]] if s["predicted"] is not None else "-"
        mark = "ok " if s["correct"] else "MISS"
        print(f"  {mark} {names[s['label']]:<28} -> {pred}")
    print(f"{right}/{len(scored)} gestures right")
    print_summary(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="live gesture recognition on the simulated camera",
                       description=__doc__)
    p.add_argument("--checkpoint", default="gestures",
                   help="checkpoint path or shipped name (default: gestures)")
    p.add_argument("--gestures", type=int, default=11, help="how many gestures (default 11)")
    p.add_argument("--duration", type=float, default=1.5, help="seconds per gesture")
    p.add_argument("--speed", type=float, default=1.0,
                   help="1 paces the camera at real time, 0 runs as fast as possible")
    p.add_argument("--seed", type=int, default=0, help="seed of the gesture order and scenes")
    p.add_argument("--threads", type=int, default=1, help="torch threads for inference (1)")
    add_engine_flag(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
