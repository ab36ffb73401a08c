"""Sustained live inference: steps/s, p50/p99 step latency, real-time factor and memory.

For the `tiny` and `small` models at 64x64 and 128x128 input with 10 ms bins, a recording of
uniformly random events at a DVS-like rate (200k events/s) is streamed through `run_stream`
by `devices.ReplayCamera` in 1 ms packets, in two ways:

- `live`: paced at real time, as a camera delivers events (the drop-oldest policy of live
  sources; any dropped bin is reported). This is the target's setting: the real-time factor
  is bin length / mean step compute time (frame to probabilities), i.e. how much faster than
  the camera the model decides (target: `tiny` at 128x128 >= 10x with the compiled step,
  p99 below the 10 ms bin).
- `replay`: as fast as the model takes the bins (blocking policy, every bin classified), as
  `spikestream stream --source file:...` does with a fast replay. Capture (packet checks and
  binning in Python, ~0.2-0.4 ms of CPU per bin here) then runs all the time beside the steps
  and competes for the interpreter lock and the cores; `wall x` is stream time / wall time.

Each runs with eager `model.step` and with `compiled=True` (a frozen TorchScript trace of
`step`, checked against eager steps when built: `pipeline.compiled`; the CLI's default). The
peers, measured in the same run over the same frames: bare loops of eager and compiled steps
with no runner, no source and no thread beside them, back to back (`bare`), and the compiled
step once per bin with the thread asleep in between (`bare idle`), as in a live stream. On
the 2-core virtual machine this was written on, a step that follows an idle bin takes about
1 ms more than one that follows another step, whatever the thread does in between (sleeping,
spinning or other torch work: only running the step itself keeps it fast; no page faults or
context switches are involved), so `live` steps cost about `bare idle`, not `bare`.

Memory (RSS) is read before the model is built, after the first tenth of a long stream and at
its end (target: flat); that stream overruns the model (an unpaced source, drop-oldest
policy) so that drops happen too.

Torch runs on one thread by default (`--threads N` to change): the target is for one thread,
and on a machine whose cores are busy with other work more threads make steps far slower.
`tiny` at 128x128 is `create_model("tiny", input_size=(128, 128))`: a 5x5 stride-4 first stem
conv and the 8x8 token grid of its native 64x64 (`configs.NATIVE_INPUT`).

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
from spikestream.devices import ReplayCamera  # noqa: E402
from spikestream.pipeline import create_model  # noqa: E402
from spikestream.pipeline.binning import to_frames  # noqa: E402
from spikestream.pipeline.compiled import compile_step  # noqa: E402
from spikestream.pipeline.streaming import StepInfo, run_stream  # noqa: E402

BIN_US = 10_000
PACKET_US = 1000
RATE_HZ = 200_000
TARGET_RTF = 10.0


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


def run_case(config: str, size: int, steps: int) -> list[dict]:
    """Live and replay runs, eager and compiled, of one model at one input size."""
    torch.manual_seed(0)
    model = create_model(config, input_size=(size, size)).eval()
    seconds = (steps + 2) * BIN_US * 1e-6
    events = random_recording(size, size, seconds, seed=1)
    frames = torch.from_numpy(
        to_frames(events, (size, size, 2), time_window=BIN_US)[:steps].astype(np.float32))
    compiled = compile_step(model, frames[:1])
    peers = {"eager": bare_p50_ms(model.step, model.init_state(1), frames),
             "compiled": bare_p50_ms(compiled.step, compiled.init_state(1), frames)}
    idle = bare_p50_ms(compiled.step, compiled.init_state(1), frames, idle_s=BIN_US * 1e-6)
    rows = []
    for mode, speed, policy in (("live", 1.0, "drop_oldest"), ("replay", None, "block")):
        for kind in ("eager", "compiled"):
            camera = ReplayCamera(events, (size, size, 2), speed=speed, packet_us=PACKET_US)
            result = run_stream(camera, model, policy=policy, max_steps=steps,
                                compiled=kind == "compiled")
            rows.append({
                "config": config,
                "input": f"{size}x{size}",
                "mode": mode,
                "step": kind,
                "steps": result.steps,
                "drops": result.drops,
                "steps_per_s": result.steps_per_s,
                "mean_ms": result.mean_ms,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "realtime_factor": result.realtime_factor,
                "wall_factor": result.stream_s / result.wall_s,
                "bare_step_p50_ms": peers[kind],
                "p50_over_bare": result.p50_ms / peers[kind],
                "bare_idle_compiled_p50_ms": idle,
            })
    return rows


def memory_case(config: str, size: int, steps: int) -> dict:
    """RSS before the model exists, after a tenth of a long stream, and at its end."""
    before = rss_mib()
    model = create_model(config, input_size=(size, size)).eval()
    marks: dict[str, float] = {}

    def on_step(info: StepInfo) -> None:
        if info.step == steps // 10:
            marks["tenth"] = rss_mib()

    # drop_oldest: the live policy, with a source faster than the model
    result = run_stream(endless_source(size, size), model, sensor_size=(size, size, 2),
                        max_steps=steps, on_step=on_step, compiled=True)
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
    print(f"{r['config']:>6} {r['input']:>8} {r['mode']:>6} {r['step']:>8}: "
          f"{r['steps_per_s']:7.1f} steps/s  p50 {r['p50_ms']:5.2f} ms  p99 {r['p99_ms']:5.2f} ms"
          f"  real-time x{r['realtime_factor']:5.2f}  wall x{r['wall_factor']:5.2f}  "
          f"drops {r['drops']:3d}  p50 / bare step {r['p50_over_bare']:4.2f} "
          f"(bare {r['bare_step_p50_ms']:.2f} ms; compiled, bare idle "
          f"{r['bare_idle_compiled_p50_ms']:.2f} ms)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 100 if args.quick else 500
    long_steps = 300 if args.quick else 3000
    rows: list[dict] = []
    if not args.json:
        print(f"torch threads: {torch.get_num_threads()}; {RATE_HZ} events/s, "
              f"{BIN_US // 1000} ms bins, {PACKET_US // 1000} ms packets, {steps} steps",
              flush=True)
    for config in ("tiny", "small"):
        for size in (64, 128):
            for row in run_case(config, size, steps):
                rows.append(row)
                if not args.json:
                    print_row(row)
    mem = memory_case("tiny", 128, long_steps)
    tiny128 = {(r["mode"], r["step"]): r for r in rows
               if r["config"] == "tiny" and r["input"] == "128x128"}
    target = tiny128["live", "compiled"]
    verdict = {
        "tiny_128_realtime_factor": target["realtime_factor"],
        "tiny_128_replay_realtime_factor": tiny128["replay", "compiled"]["realtime_factor"],
        "rtf_target_met": target["realtime_factor"] >= TARGET_RTF,
        "p99_below_bin": target["p99_ms"] < BIN_US / 1000,
        "memory_growth_mib": mem["rss_end_mib"] - (mem["rss_tenth_mib"] or mem["rss_end_mib"]),
    }
    if args.json:
        print(json.dumps({"cases": rows, "memory": mem, "verdict": verdict}, indent=2))
        return 0
    print(f"memory (tiny 128x128 compiled, {mem['steps']} steps, {mem['drops']} bins dropped): "
          f"start {mem['rss_start_mib']:.1f} MiB, after a tenth {mem['rss_tenth_mib']:.1f} "
          f"MiB, end {mem['rss_end_mib']:.1f} MiB")
    print(f"torch threads: {torch.get_num_threads()}; load average (1, 5, 15 min): "
          + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    print(f"target (live, compiled step): tiny 128x128 >= {TARGET_RTF:.0f}x real time "
          f"({'met' if verdict['rtf_target_met'] else 'NOT met'}: "
          f"x{verdict['tiny_128_realtime_factor']:.2f}; replay "
          f"x{verdict['tiny_128_replay_realtime_factor']:.2f}); p99 < {BIN_US / 1000:.0f} ms "
          f"({'met' if verdict['p99_below_bin'] else 'NOT met'}: {target['p99_ms']:.2f} ms); "
          f"memory growth {verdict['memory_growth_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
