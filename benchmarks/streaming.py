"""Sustained live inference: steps/s, p50/p99 step latency, real-time factor and memory.

For the `tiny` and `small` models at 64x64 and 128x128 input with 10 ms bins, a recording of
uniformly random events at a DVS-like rate (200k events/s) is streamed through `run_stream`
by `devices.ReplayCamera` in 1 ms packets, in two ways:

- `live`: paced at real time, as a camera delivers events (the drop-oldest policy of live
  sources; any dropped bin is reported). This is the target's setting: the real-time factor
  is bin length / mean step compute time (frame to probabilities), i.e. how much faster than
  the camera the model decides (target: `tiny` at 128x128 >= 30x with the CLI's default
  engine, which is `numba` for these models, for `ssa` and `lrf_dyn`; p99 below the 10 ms
  bin). `cpu/bin` is everything the run costs per classified bin (process CPU time: packets,
  checks, binning, queue, thread hand-off, step and decision), and its factor bin / cpu.
- `replay`: as fast as the model takes the bins (blocking policy, every bin classified), as
  `spikestream stream --source file:...` does with a fast replay. Capture (packet checks and
  binning in Python) then runs all the time beside the steps and competes for the
  interpreter lock and the cores; `wall x` is stream time / wall time.

Each runs with the three engines of `pipeline.engines.make_step`: `eager` (`model.step`),
`torchscript` (a frozen trace of it) and `numba` (event-driven kernels,
`pipeline.engines.numba_step`); the fast ones are checked against eager steps when built (an
engine that falls back is reported with the mode it runs in). The peers,
measured in the same run over the same frames: bare loops of each engine's step with no
runner, no source and no thread beside them, back to back (`bare`) and with the thread asleep
for one bin before each step (`idle`), as in a live stream. On the 2-core virtual machine
this was written on, a step that follows an idle bin costs far more than one that follows
another step (about +1 ms for TorchScript, +0.35 ms for numba): whatever the thread does in
between, the code and data of the step have left the caches, and the fewer of both a step
touches the less it pays. So `live` steps cost about `idle`, not `bare`.

Activity: a freshly initialised model with default batch-norm statistics is silent on this
input (no neuron fires), which would flatter the event-driven engine, whose work grows with
the spikes. The models here first estimate their batch-norm statistics on frames of the
stream (train-mode passes, as at the start of training), and the mean firing rate of their
neurons is printed with each case (the shipped `gestures` checkpoint fires at 1-20% per
layer, 9% on average, on the simulated camera).

Tokens: bare numba steps of `ssa` and `lrf_dyn` in `tiny` at 64x64 whose stem pools give
N = 64, 256 and 1024 tokens (8x8, 16x16, 32x32), on the same stream (targets: `lrf_dyn` no
slower than `ssa` at N = 64 and faster from N = 256, since it forms no N x N matrix).

Memory (RSS) is read before the model is built, after the first tenth of a long stream and at
its end (target: flat); that stream overruns the model (an unpaced source, drop-oldest
policy) so that drops happen too.

Torch runs on one thread by default (`--threads N` to change): the target is for one thread,
and on a machine whose cores are busy with other work more threads make steps far slower.
`tiny` at 128x128 is `create_model("tiny", input_size=(128, 128))`: a 5x5 stride-4 first stem
conv and the 8x8 token grid of its native 64x64 (`configs.NATIVE_INPUT`).

The attention is `ssa` unless `--keys` names others (`--keys all`: every registered key,
STAtten in its causal mode); the memory run and the targets use the first key.

    .venv/bin/python benchmarks/streaming.py [--quick] [--keys ssa lrf_dyn | all] [--threads 1]
        [--json]
"""

from __future__ import annotations

import os
import sys

_THREADS = "1"
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = _THREADS

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spikestream import make_events  # noqa: E402
from spikestream.devices import ReplayCamera  # noqa: E402
from spikestream.pipeline import create_model  # noqa: E402
from spikestream.pipeline.binning import to_frames  # noqa: E402
from spikestream.pipeline.engines import make_step  # noqa: E402
from spikestream.pipeline.network.attention import ATTENTION  # noqa: E402
from spikestream.pipeline.network.neurons import LIF  # noqa: E402
from spikestream.pipeline.recipe import InputRecipe  # noqa: E402
from spikestream.pipeline.streaming import (  # noqa: E402
    Sink,
    StepInfo,
    StreamPolicy,
    run_stream,
)

BIN_US = 10_000
PACKET_US = 1000
RATE_HZ = 200_000
TARGET_RTF = 30.0
ENGINES = ("eager", "torchscript", "numba")
TARGET_ENGINE = "numba"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_recording(width: int, height: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Uniformly random events at `RATE_HZ` over `seconds`, time-ordered."""
    rng = np.random.default_rng(seed)
    n = int(RATE_HZ * seconds)
    t = np.sort(rng.integers(0, int(seconds * 1e6), n))
    return make_events(rng.integers(0, width, n), rng.integers(0, height, n), t,
                       rng.integers(0, 2, n))


def endless_source(width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Random events at `RATE_HZ` in `PACKET_US` packets, for ever, as fast as read."""
    rng = np.random.default_rng(seed)
    per = int(RATE_HZ * PACKET_US * 1e-6)
    for start in itertools.count(0, PACKET_US):
        t = np.sort(rng.integers(start, start + PACKET_US, per))
        yield make_events(rng.integers(0, width, per), rng.integers(0, height, per), t,
                          rng.integers(0, 2, per))


def bare_p50_ms(step, state: dict, frames: torch.Tensor, idle_s: float = 0.0) -> float:
    """Median time of `step` over `frames` in a plain loop (the peer), with the thread asleep
    for `idle_s` before each step (one bin: as in a live stream)."""
    times = []
    with torch.inference_mode():
        for frame in frames:
            if idle_s:
                time.sleep(idle_s)
            start = time.perf_counter()
            _, state = step(frame[None], state)
            times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3)


def calibrated_model(config: str, size: int, frames: torch.Tensor,
                     key: str = "ssa") -> torch.nn.Module:
    """`create_model(config, key)` with batch-norm statistics estimated on `frames[T, P, H, W]`
    (cumulative averages over train-mode passes of 4 streams of T / 4 steps), in eval mode."""
    torch.manual_seed(0)
    kwargs = {"mode": "causal"} if key == "statten" else {}
    model = create_model(config, key, kwargs, input_size=(size, size))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the passes
    t = frames.shape[0] // 4
    model.train()
    with torch.no_grad():
        model(frames[: 4 * t].reshape(4, t, *frames.shape[1:]).transpose(0, 1).contiguous())
    return model.eval()


def firing_rate(model: torch.nn.Module, frames: torch.Tensor) -> float:
    """Mean spike rate of the model's LIF neurons over `frames[T, P, H, W]` (one stream)."""
    spikes, total = [0.0], [0]

    def hook(_m, _inp, out: torch.Tensor) -> None:
        spikes[0] += float(out.sum())
        total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LIF)]
    try:
        with torch.no_grad():
            model(frames[:, None])
    finally:
        for h in handles:
            h.remove()
    return spikes[0] / max(total[0], 1)


def run_case(config: str, size: int, steps: int, key: str = "ssa") -> list[dict]:
    """Live and replay runs of one model at one input size with each engine."""
    seconds = (steps + 2) * BIN_US * 1e-6
    events = random_recording(size, size, seconds, seed=1)
    frames = torch.from_numpy(
        to_frames(events, (size, size, 2), time_window=BIN_US)[:steps].astype(np.float32))
    model = calibrated_model(config, size, frames, key)
    rate = firing_rate(model, frames[:50])
    steppers = {e: make_step(model, frames[:1], e) for e in ENGINES}
    bare = {e: bare_p50_ms(s.step, s.init_state(1), frames) for e, s in steppers.items()}
    idle = {e: bare_p50_ms(s.step, s.init_state(1), frames, idle_s=BIN_US * 1e-6)
            for e, s in steppers.items() if e != "eager"}
    rows = []
    for mode, speed, policy in (("live", 1.0, "drop_oldest"), ("replay", None, "block")):
        for engine in ENGINES:
            camera = ReplayCamera(events, (size, size, 2), speed=speed, packet_us=PACKET_US)
            recipe = InputRecipe.from_binning({"time_window": BIN_US}, (size, size, 2),
                                              (size, size))
            cpu0 = time.process_time()
            result = run_stream(camera, steppers[engine], recipe,
                                policy=StreamPolicy(queue=policy, max_steps=steps))
            cpu_per_bin = (time.process_time() - cpu0) / max(result.steps, 1)
            rows.append({
                "config": config,
                "attention": key,
                "input": f"{size}x{size}",
                "firing_rate": rate,
                "mode": mode,
                "engine": engine,
                "engine_mode": steppers[engine].mode,
                "steps": result.steps,
                "drops": result.drops,
                "steps_per_s": result.steps_per_s,
                "mean_ms": result.mean_ms,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "realtime_factor": result.realtime_factor,
                "cpu_per_bin_ms": cpu_per_bin * 1e3,
                "cpu_realtime_factor": BIN_US * 1e-6 / cpu_per_bin,
                "wall_factor": result.stream_s / result.wall_s,
                "bare_step_p50_ms": bare[engine],
                "idle_step_p50_ms": idle.get(engine),
                "p50_over_bare": result.p50_ms / bare[engine],
            })
    return rows


#: Token grids of `tiny` at 64x64 input compared on the numba engine: stem pools -> N.
TOKEN_CASES = {64: (True, True, True), 256: (True, True, False), 1024: (True, False, False)}


def token_case(steps: int, repeats: int = 3) -> list[dict]:
    """Bare numba steps of `ssa` and `lrf_dyn` (`tiny` at 64x64 on the same stream, batch-norm
    statistics estimated on it) at N = 64, 256 and 1024 tokens: median step time of each,
    interleaved `repeats` times (best median kept), and lrf_dyn / ssa."""
    size = 64
    events = random_recording(size, size, (steps + 2) * BIN_US * 1e-6, seed=3)
    frames = torch.from_numpy(
        to_frames(events, (size, size, 2), time_window=BIN_US)[:steps].astype(np.float32))
    rows = []
    for n, pools in TOKEN_CASES.items():
        steppers = {}
        for key in ("ssa", "lrf_dyn"):
            torch.manual_seed(0)
            model = create_model("tiny", key, input_size=(size, size), stem_pool=pools)
            assert model.num_tokens == n
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = None
            model.train()
            with torch.no_grad():
                t = len(frames) // 4
                model(frames[: 4 * t].reshape(4, t, *frames.shape[1:]).transpose(0, 1)
                      .contiguous())
            steppers[key] = make_step(model.eval(), frames[:1], "numba")
        best = {key: float("inf") for key in steppers}
        for _ in range(repeats):
            for key, st in steppers.items():
                best[key] = min(best[key], bare_p50_ms(st.step, st.init_state(1), frames))
        rows.append({"tokens": n, "ssa_ms": best["ssa"], "lrf_dyn_ms": best["lrf_dyn"],
                     "ratio": best["lrf_dyn"] / best["ssa"],
                     "modes": {k: st.mode for k, st in steppers.items()}})
    return rows


def memory_case(config: str, size: int, steps: int, key: str = "ssa") -> dict:
    """RSS before the model exists, after a tenth of a long stream, and at its end."""
    before = rss_mib()
    frames = torch.from_numpy(to_frames(random_recording(size, size, 0.42, seed=2),
                                        (size, size, 2), time_window=BIN_US)[:40]
                              .astype(np.float32))
    model = calibrated_model(config, size, frames, key)
    marks: dict[str, float] = {}

    def on_step(info: StepInfo) -> None:
        if info.step == steps // 10:
            marks["tenth"] = rss_mib()

    # drop_oldest: the live policy, with a source faster than the model
    recipe = InputRecipe.from_binning({"time_window": BIN_US}, (size, size, 2), (size, size))
    result = run_stream(endless_source(size, size), make_step(model, frames[:1], TARGET_ENGINE),
                        recipe, sinks=[Sink(on_step=on_step)],
                        policy=StreamPolicy(queue="drop_oldest", max_steps=steps))
    return {
        "config": config,
        "input": f"{size}x{size}",
        "steps": result.steps,
        "drops": result.drops,
        "rss_start_mib": before,
        "rss_tenth_mib": marks.get("tenth"),
        "rss_end_mib": rss_mib(),
    }


def print_row(r: dict) -> None:
    idle = r["idle_step_p50_ms"]
    engine = r["engine"] if r["engine_mode"] in ("numba", "eager") else \
        f"{r['engine']}/{r['engine_mode']}"
    print(f"{r['config']:>6} {r['attention']:>7} {r['input']:>8} {r['mode']:>6} {engine:>11}: "
          f"{r['steps_per_s']:7.1f} steps/s  p50 {r['p50_ms']:5.2f} ms  p99 {r['p99_ms']:5.2f} ms"
          f"  real-time x{r['realtime_factor']:5.2f}  wall x{r['wall_factor']:5.2f}  "
          f"cpu/bin {r['cpu_per_bin_ms']:5.2f} ms (x{r['cpu_realtime_factor']:5.2f})  "
          f"drops {r['drops']:3d}  bare {r['bare_step_p50_ms']:.2f} ms"
          + (f", idle {idle:.2f} ms" if idle is not None else "")
          + f"  (firing rate {r['firing_rate']:.3f})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--keys", nargs="+", default=["ssa"],
                    help="attention keys (default ssa; 'all': every registered key)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    keys = sorted(ATTENTION) if args.keys == ["all"] else args.keys
    unknown = set(keys) - set(ATTENTION)
    if unknown:
        ap.error(f"unknown attention keys {sorted(unknown)}; known: {sorted(ATTENTION)}")
    torch.set_num_threads(args.threads)
    steps = 100 if args.quick else 500
    long_steps = 300 if args.quick else 3000
    rows: list[dict] = []
    if not args.json:
        print(f"torch threads: {torch.get_num_threads()}; {RATE_HZ} events/s, "
              f"{BIN_US // 1000} ms bins, {PACKET_US // 1000} ms packets, {steps} steps",
              flush=True)
    for key in keys:
        for config in ("tiny", "small"):
            for size in (64, 128):
                for row in run_case(config, size, steps, key):
                    rows.append(row)
                    if not args.json:
                        print_row(row)
    tokens = token_case(100 if args.quick else 300)
    if not args.json:
        for r in tokens:
            print(f"numba, tiny 64x64, N={r['tokens']:>4}: ssa {r['ssa_ms']:6.3f} ms, lrf_dyn "
                  f"{r['lrf_dyn_ms']:6.3f} ms per step (bare p50): lrf_dyn / ssa "
                  f"{r['ratio']:.2f}", flush=True)
    mem = memory_case("tiny", 128, long_steps, keys[0])
    tiny128 = {(r["mode"], r["engine"]): r for r in rows if r["config"] == "tiny"
               and r["input"] == "128x128" and r["attention"] == keys[0]}
    target = tiny128["live", TARGET_ENGINE]
    live = {r["attention"]: r["realtime_factor"] for r in rows if r["config"] == "tiny"
            and r["input"] == "128x128" and r["mode"] == "live" and r["engine"] == TARGET_ENGINE}
    verdict = {
        "engine": TARGET_ENGINE,
        "tiny_128_live_realtime_factor_by_key": live,
        "lrf_dyn_not_slower_at_64": tokens[0]["ratio"] <= 1.0,
        "lrf_dyn_faster_at_256_and_1024": all(r["ratio"] < 1.0 for r in tokens[1:]),
        "tiny_128_realtime_factor": target["realtime_factor"],
        "tiny_128_replay_realtime_factor": tiny128["replay", TARGET_ENGINE]["realtime_factor"],
        "rtf_target_met": target["realtime_factor"] >= TARGET_RTF,
        "p99_below_bin": target["p99_ms"] < BIN_US / 1000,
        "memory_growth_mib": mem["rss_end_mib"] - (mem["rss_tenth_mib"] or mem["rss_end_mib"]),
    }
    if args.json:
        print(json.dumps({"cases": rows, "tokens": tokens, "memory": mem, "verdict": verdict},
                         indent=2))
        return 0
    print(f"memory (tiny 128x128 {TARGET_ENGINE}, {mem['steps']} steps, "
          f"{mem['drops']} bins dropped): "
          f"start {mem['rss_start_mib']:.1f} MiB, after a tenth {mem['rss_tenth_mib']:.1f} "
          f"MiB, end {mem['rss_end_mib']:.1f} MiB")
    print(f"torch threads: {torch.get_num_threads()}; load average (1, 5, 15 min): "
          + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    print(f"target (live, {TARGET_ENGINE} engine, {keys[0]}): tiny 128x128 >= "
          f"{TARGET_RTF:.0f}x real time "
          f"({'met' if verdict['rtf_target_met'] else 'NOT met'}: "
          f"x{verdict['tiny_128_realtime_factor']:.2f}; replay "
          f"x{verdict['tiny_128_replay_realtime_factor']:.2f}); p99 < {BIN_US / 1000:.0f} ms "
          f"({'met' if verdict['p99_below_bin'] else 'NOT met'}: {target['p99_ms']:.2f} ms); "
          f"memory growth {verdict['memory_growth_mib']:.1f} MiB")
    print("live real-time factor (step compute) of tiny 128x128 by key: " + ", ".join(
        f"{k} x{v:.1f}" for k, v in live.items()) + f" (target >= {TARGET_RTF:.0f}x)")
    print(f"lrf_dyn / ssa on numba: N=64 {tokens[0]['ratio']:.2f} (target <= 1: "
          f"{'met' if verdict['lrf_dyn_not_slower_at_64'] else 'NOT met'}), "
          + ", ".join(f"N={r['tokens']} {r['ratio']:.2f}" for r in tokens[1:])
          + f" (target < 1: {'met' if verdict['lrf_dyn_faster_at_256_and_1024'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
