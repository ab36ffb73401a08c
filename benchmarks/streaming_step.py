"""Time per `step` at stream positions 10, 1,000 and 100,000 (target: flat within 20%),
for every attention key and engine asked for, against recomputing `forward` over a sliding
window of the model's T frames per new frame.

Every position is reached by real steps on one stream (the state is carried, nothing is
skipped). Each engine (`pipeline.engines.make_step`: `eager`, `torchscript`, `numba`; an engine
that cannot run a model falls back and is reported with the mode it runs in) is timed on its
own stream; between measured positions the stream is fast-forwarded by the engine itself, and
the eager engine's by the TorchScript step (the same state layout; `--eager-fast-forward`
keeps eager steps). So that 100,000 real steps stay affordable on one CPU core, the stream
runs at a small input size by default (`--input-size 32 32`: the config's channels, depth,
heads and stem, fewer pixels and tokens); `--input-size 0 0` keeps the config's own size.
Input frames cycle through a fixed set of random event frames. At each position the fastest of
`--reps` consecutive steps is reported, with the state's size in bytes (which must not change).

    python benchmarks/streaming_step.py [--quick] [--configs tiny small] [--keys lrf_dyn | all]
        [--engines eager torchscript numba]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
from rich.progress import Progress

from spikestream.pipeline import create_model, make_step, state_nbytes
from spikestream.pipeline.network.attention import ATTENTION

POSITIONS = (10, 1_000, 100_000)
QUICK_POSITIONS = (10, 1_000, 10_000)
ENGINES = ("eager", "torchscript", "numba")


def nbytes(state) -> int:
    """Bytes of an engine's state (the model's nested tensors, or numba's flat array)."""
    return state.nbytes if isinstance(state, np.ndarray) else state_nbytes(state)


def timed_steps(model, frames, state, pos: int, reps: int, reference=None, ref_model=None):
    """Run `reps` steps from `pos`; returns (fastest step in seconds, state, new position,
    fastest step from `reference`). The minimum is the cost of a step without interference
    from other processes, which is what could change with the stream position. Steps from the
    reference state (a snapshot of the stream at the first position, stepped and discarded)
    are interleaved with the stream's own steps, so that their ratio resists load changes;
    `ref_model` steps them where a step writes into buffers the stream's state lives in (the
    numba engine's)."""
    times, ref_times = [], []
    for _ in range(reps):
        x = frames[pos % len(frames)]
        t0 = time.perf_counter()
        _, state = model.step(x, state)
        times.append(time.perf_counter() - t0)
        if reference is not None:
            t0 = time.perf_counter()
            (ref_model or model).step(x, reference)
            ref_times.append(time.perf_counter() - t0)
        pos += 1
    ref = min(ref_times) if ref_times else None
    return min(times), state, pos, ref


def run_one(config: str, key: str, engine: str, size: tuple[int, int] | None, positions,
            reps: int, bar: Progress, eager_fast_forward: bool) -> dict:
    torch.manual_seed(0)
    kwargs = {"mode": "causal"} if key == "statten" else {}
    overrides = {"input_size": size} if size else {}
    model = create_model(config, key, kwargs, **overrides).eval()
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(64, 1, model.in_channels, *model.input_size, generator=g) < 0.05).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback shows in the reported mode
        stepper = make_step(model, frames[0], engine)
        fast = stepper
        # the numba step writes into its own two state buffers: the reference steps get theirs
        ref_stepper = make_step(model, frames[0], engine) if stepper.mode == "numba" else stepper
        if stepper.mode == "eager" and not eager_fast_forward:
            fast = make_step(model, frames[0], "torchscript")
    state = stepper.init_state(1)
    bytes0 = nbytes(state)
    out = {"config": config, "attention": key, "engine": engine, "mode": stepper.mode,
           "input_size": model.input_size, "tokens": model.num_tokens, "state_bytes": bytes0,
           "positions": {}}
    task = bar.add_task(f"{config}/{key}/{engine}", total=positions[-1] + reps)
    pos = 0
    model.requires_grad_(False)
    with torch.inference_mode():
        reference = None
        warm = state
        for i in range(reps):  # warm-up on a throw-away copy: the stream stays at position 0
            _, warm = stepper.step(frames[i % len(frames)], warm)
        for target in positions:
            while pos < target:  # fast-forward: real steps, untimed
                _, state = fast.step(frames[pos % len(frames)], state)
                pos += 1
                if pos % 500 == 0:
                    bar.update(task, completed=pos)
            snapshot = reference
            if reference is None:  # the stream at the first position (steps do not mutate it)
                reference = state.copy() if isinstance(state, np.ndarray) else state
            sec, state, pos, ref = timed_steps(stepper, frames, state, pos, reps, snapshot,
                                               ref_stepper)
            out["positions"][target] = {"step_s": sec, "state_bytes": nbytes(state),
                                        "ratio_to_first": sec / ref if ref else 1.0}
            bar.update(task, completed=pos)
        t = model.time_steps
        window = torch.cat([frames] * (t // len(frames) + 1))[:t]
        times = []
        for _ in range(max(3, reps // 4)):
            t0 = time.perf_counter()
            model(window)
            times.append(time.perf_counter() - t0)
        out["window_s"] = min(times)
        out["window_T"] = t
    bar.remove_task(task)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny only, positions 10, 1,000 and 10,000, 16x16 input")
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--keys", "--attention", nargs="+", default=["lrf_dyn"],
                    help="attention keys (default lrf_dyn; 'all': every registered key)")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--positions", nargs="+", type=int, default=None)
    ap.add_argument("--input-size", nargs=2, type=int, default=(32, 32), metavar=("H", "W"),
                    help="input size for the stream (0 0: the config's own size)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--eager-fast-forward", action="store_true",
                    help="fast-forward the eager engine with eager `step` calls, not the trace")
    args = ap.parse_args(argv)
    keys = sorted(ATTENTION) if args.keys == ["all"] else args.keys
    unknown = set(keys) - set(ATTENTION)
    if unknown:
        ap.error(f"unknown attention keys {sorted(unknown)}; known: {sorted(ATTENTION)}")
    torch.set_num_threads(1)
    if args.quick:
        args.configs, size = ["tiny"], (16, 16)
        positions = tuple(args.positions or QUICK_POSITIONS)
    else:
        size = tuple(args.input_size) if args.input_size[0] > 0 else None
        positions = tuple(args.positions or POSITIONS)
    results = []
    with Progress() as bar:
        for config in args.configs:
            for key in keys:
                for engine in args.engines:
                    results.append(run_one(config, key, engine, size, positions, args.reps, bar,
                                           args.eager_fast_forward))

    first = positions[0]
    print(f"\n== time per step [ms] at stream position (fastest of {args.reps}), one CPU thread;"
          f" in brackets: ratio to a step from the position-{first} state, interleaved")
    head = "".join(f"{'pos ' + format(p, ','):>20}" for p in positions)
    print(f"{'model/engine (mode)':<34}{'input':>7}{'N':>4}{head}{'max ratio':>10}{'T':>4}"
          f"{'fwd(T) ms':>10}{'fwd/step':>9}  state bytes")
    ok = True
    for r in results:
        ms = [r["positions"][p]["step_s"] * 1e3 for p in positions]
        ratios = [r["positions"][p]["ratio_to_first"] for p in positions]
        worst = max(max(ratios), 1 / min(ratios))
        ok &= worst <= 1.2
        sizes = {r["positions"][p]["state_bytes"] for p in positions} | {r["state_bytes"]}
        ok &= len(sizes) == 1
        h, w = r["input_size"]
        cells = "".join(f"{m:11.3f} ({q:5.3f})" for m, q in zip(ms, ratios, strict=True))
        name = f"{r['config']}/{r['attention']}/{r['engine']} ({r['mode']})"
        print(f"{name:<34}{f'{h}x{w}':>7}{r['tokens']:>4}{cells}"
              f"{worst:10.3f}{r['window_T']:>4}{r['window_s'] * 1e3:10.2f}"
              f"{r['window_s'] * 1e3 / min(ms):9.1f}  "
              + ("constant " if len(sizes) == 1 else "CHANGED ") + str(sorted(sizes)))
    print(f"target (flat within 20%, constant state): {'met' if ok else 'NOT met'}")
    speedups(results, positions)
    return 0


def speedups(results: list[dict], positions: list[int]) -> None:
    """Per model and key: the TorchScript step's time over the numba step's (each its fastest
    position), target >= 5x."""
    best = {(r["config"], r["attention"], r["engine"]): (
        min(r["positions"][p]["step_s"] for p in positions), r["mode"]) for r in results}
    pairs = sorted({(c, k) for c, k, e in best if e == "numba"} & {
        (c, k) for c, k, e in best if e == "torchscript"})
    if not pairs:
        return
    print("\n== numba against TorchScript (fastest step of each; target >= 5x)")
    for config, key in pairs:
        fast, fmode = best[(config, key, "numba")]
        ts, tmode = best[(config, key, "torchscript")]
        ratio = ts / fast
        verdict = ("met" if ratio >= 5 else "NOT met") if fmode == "numba" else (
            f"numba fell back to {fmode}")
        print(f"{config}/{key:<10} torchscript {ts * 1e3:8.3f} ms ({tmode}), numba "
              f"{fast * 1e3:8.3f} ms: {ratio:6.1f}x  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
