"""Time `to_frames` against Tonic's `ToFrame` on the same events, one core.

Synthetic, uniformly random events (10 million over 10 s by default; `--quick`: 1 million over
1 s) binned in 10 ms windows, on a 128x128 sensor and on a DAVIS346 (346x260) sensor.
Prints both rates in million events per second and their ratio (target: >= 10x Tonic).

    .venv/bin/python benchmarks/binning.py [--quick] [--repeats N] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import tonic  # noqa: E402

from spikestream import make_events  # noqa: E402
from spikestream.pipeline.binning import to_frames  # noqa: E402

TARGET_RATIO = 10.0


def synthetic_events(n: int, width: int, height: int, duration_us: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, n))
    return make_events(rng.integers(0, width, n), rng.integers(0, height, n), t,
                       rng.integers(0, 2, n))


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_case(n: int, width: int, height: int, duration_us: int, window_us: int,
             repeats: int) -> dict:
    ev = synthetic_events(n, width, height, duration_us)
    sensor = (width, height, 2)
    tonic_transform = tonic.transforms.ToFrame(sensor_size=sensor, time_window=window_us)
    to_frames(ev[:1000], sensor, time_window=window_us)  # compile / load the kernel first
    ours_s = tonic_s = float("inf")
    n_frames = 0
    for _ in range(repeats):  # interleaved, best of each: both see the same machine load
        s, ours = timed(lambda: to_frames(ev, sensor, time_window=window_us))
        ours_s = min(ours_s, s)
        s, ref = timed(lambda: tonic_transform(ev))
        tonic_s = min(tonic_s, s)
        if not np.array_equal(ours, ref):
            raise SystemExit(f"frames differ from Tonic's at {width}x{height}")
        n_frames = len(ours)
        del ours, ref
    return {
        "sensor": f"{width}x{height}",
        "events": n,
        "frames": n_frames,
        "ours_s": ours_s,
        "tonic_s": tonic_s,
        "ours_mev_s": n / ours_s / 1e6,
        "tonic_mev_s": n / tonic_s / 1e6,
        "ratio": tonic_s / ours_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 million events over 1 s")
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    n, duration = (1_000_000, 1_000_000) if args.quick else (10_000_000, 10_000_000)
    results = [run_case(n, w, h, duration, 10_000, args.repeats)
               for w, h in ((128, 128), (346, 260))]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'sensor':>8} {'events':>10} {'frames':>6} {'ours M ev/s':>12} "
              f"{'Tonic M ev/s':>13} {'ratio':>7}")
        for r in results:
            print(f"{r['sensor']:>8} {r['events']:>10} {r['frames']:>6} {r['ours_mev_s']:>12.1f} "
                  f"{r['tonic_mev_s']:>13.1f} {r['ratio']:>6.1f}x")
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
        print(f"target: >= {TARGET_RATIO:.0f}x Tonic's ToFrame on one core; "
              f"{'met' if min(r['ratio'] for r in results) >= TARGET_RATIO else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
