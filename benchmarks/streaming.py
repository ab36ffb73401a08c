"""Sustained live inference: steps/s, p50/p99 step latency, real-time factor and memory.

For the `tiny` and `small` models at 64x64 and 128x128 input with 10 ms bins, a synthetic
source (uniformly random events at a DVS-like rate, as fast as it can be read) is streamed
through `run_stream` with the blocking queue policy, so that every bin is classified. The
real-time factor is bin length / mean step time (target: `tiny` at 128x128 >= 10x, p99 below
the 10 ms bin). Memory (RSS) is read before the model is built, after the first tenth of a
long stream and at its end (target: flat). Each case runs twice: eager `model.step`, and
`run_stream(..., compiled=True)` (a frozen TorchScript trace of `step`, checked against eager
steps when built: `pipeline.compiled`); the peer of both is a bare loop of eager `model.step`
over the same frames. The verdict is for the compiled step (the CLI's default, `--jit`).
Runner step times exceed the bare loop's mostly because the capture thread (this source
draws and bins its events in Python, ~0.8 ms per bin here) runs while a step does, competing
for the interpreter lock and the cores; the frame conversion and the decision add ~0.2-0.3 ms.

Torch runs on one thread by default (`--threads N` to change): the target is for one thread,
and on a machine whose cores are busy with other work more threads make steps far slower.
`tiny` at 128x128 is `create_model("tiny", input_size=(128, 128))`: a stride-2 first stem conv
and the 8x8 token grid of its native 64x64 (`configs.NATIVE_INPUT`).

    .venv/bin/python benchmarks/streaming.py [--quick] [--threads 1] [--json]
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
from spikestream.pipeline import create_model  # noqa: E402
from spikestream.pipeline.binning import to_frames  # noqa: E402
from spikestream.pipeline.streaming import StepInfo, run_stream  # noqa: E402

BIN_US = 10_000
TARGET_RTF = 10.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic_source(width: int, height: int, seconds: float | None, rate_hz: float = 200_000,
                     packet_us: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Random events at `rate_hz`, cut into `packet_us` packets (`seconds=None`: endless)."""
    rng = np.random.default_rng(seed)
    per = max(1, int(rate_hz * packet_us * 1e-6))
    starts = itertools.count(0, packet_us) if seconds is None else range(
        0, int(seconds * 1e6), packet_us)
    for start in starts:
        t = np.sort(rng.integers(start, start + packet_us, per))
        yield make_events(rng.integers(0, width, per), rng.integers(0, height, per), t,
                          rng.integers(0, 2, per))


def run_case(config: str, size: int, steps: int, compiled: bool) -> dict:
    torch.manual_seed(0)
    model = create_model(config, input_size=(size, size)).eval()
    seconds = (steps + 1) * BIN_US * 1e-6
    run_stream(synthetic_source(size, size, 0.1, seed=1), model, sensor_size=(size, size, 2),
               policy="block", compiled=compiled)  # warm-up
    result = run_stream(synthetic_source(size, size, seconds), model, sensor_size=(size, size, 2),
                        policy="block", max_steps=steps, compiled=compiled)
    # the peer: the same model stepping over the same frames in a bare loop, no runner
    events = np.concatenate(list(synthetic_source(size, size, seconds)))
    frames = torch.from_numpy(
        to_frames(events, (size, size, 2), time_window=BIN_US)[:steps].astype(np.float32))
    state = model.init_state(1)
    bare = []
    with torch.inference_mode():
        for frame in frames:
            start = time.perf_counter()
            _, state = model.step(frame[None], state)
            bare.append(time.perf_counter() - start)
    bare_p50 = float(np.percentile(bare, 50) * 1e3)
    return {
        "config": config,
        "input": f"{size}x{size}",
        "step": "compiled" if compiled else "eager",
        "steps": result.steps,
        "bare_step_p50_ms": bare_p50,
        "steps_per_s": result.steps_per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "realtime_factor": result.realtime_factor,
        "drops": result.drops,
    }


def memory_case(config: str, size: int, steps: int, compiled: bool) -> dict:
    """RSS before the model exists, after a tenth of a long stream, and at its end."""
    before = rss_mib()
    model = create_model(config, input_size=(size, size)).eval()
    marks: dict[str, float] = {}

    def on_step(info: StepInfo) -> None:
        if info.step == steps // 10:
            marks["tenth"] = rss_mib()

    # drop_oldest: the live policy, with a source faster than the model
    result = run_stream(synthetic_source(size, size, None), model,
                        sensor_size=(size, size, 2),
                        max_steps=steps, on_step=on_step, compiled=compiled)
    return {
        "config": config,
        "input": f"{size}x{size}",
        "steps": result.steps,
        "drops": result.drops,
        "rss_start_mib": before,
        "rss_tenth_mib": marks.get("tenth"),
        "rss_end_mib": rss_mib(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 30 if args.quick else 300
    long_steps = 300 if args.quick else 3000
    rows = []
    if not args.json:
        print(f"torch threads: {torch.get_num_threads()}", flush=True)
    for config in ("tiny", "small"):
        for size in (64, 128):
            for compiled in (False, True):
                rows.append(run_case(config, size, steps, compiled))
                if args.json:
                    continue
                r = rows[-1]
                print(f"{r['config']:>6} {r['input']:>8} {r['step']:>8}: "
                      f"{r['steps_per_s']:8.1f} steps/s  "
                      f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                      f"real-time x{r['realtime_factor']:6.2f}  "
                      f"(bare model.step p50 {r['bare_step_p50_ms']:7.2f} ms)", flush=True)
    mem = memory_case("tiny", 128, long_steps, compiled=True)
    tiny128 = next(r for r in rows if r["config"] == "tiny" and r["input"] == "128x128"
                   and r["step"] == "compiled")
    verdict = {
        "tiny_128_realtime_factor": tiny128["realtime_factor"],
        "rtf_target_met": tiny128["realtime_factor"] >= TARGET_RTF,
        "p99_below_bin": tiny128["p99_ms"] < BIN_US / 1000,
        "memory_growth_mib": mem["rss_end_mib"] - (mem["rss_tenth_mib"] or mem["rss_end_mib"]),
    }
    if args.json:
        print(json.dumps({"cases": rows, "memory": mem, "verdict": verdict}, indent=2))
    else:
        print(f"memory (tiny 128x128 compiled, {mem['steps']} steps, {mem['drops']} bins dropped): "
              f"start {mem['rss_start_mib']:.1f} MiB, after a tenth {mem['rss_tenth_mib']:.1f} "
              f"MiB, end {mem['rss_end_mib']:.1f} MiB")
        print(f"torch threads: {torch.get_num_threads()}; load average (1, 5, 15 min): "
              + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
        print(f"target (compiled step): tiny 128x128 >= {TARGET_RTF:.0f}x real time "
              f"({'met' if verdict['rtf_target_met'] else 'NOT met'}: "
              f"x{verdict['tiny_128_realtime_factor']:.2f}); p99 < {BIN_US / 1000:.0f} ms "
              f"({'met' if verdict['p99_below_bin'] else 'NOT met'}); memory growth "
              f"{verdict['memory_growth_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
