"""Time `to_frames` against Tonic's `ToFrame` and evlib's stacked histogram on the same
events, one core.

Synthetic, uniformly random events (10 million over 10 s by default; `--quick`: 1 million over
1 s) binned in 10 ms windows, on a 128x128 sensor and on a DAVIS346 (346x260) sensor.
Prints the rates in million events per second and ours over each peer (targets: >= 20x Tonic,
>= 3x evlib). evlib (`pip install spikestream[bench]`) counts events per window, polarity and
pixel with polars (`create_stacked_histogram`, windows from the first event's time, as Tonic's
and ours) into a long table; `densify_event_frame` makes it the dense frames the others give,
and both steps are timed, from a polars DataFrame of the events built outside the timing. Its
last, incomplete window is dropped (Tonic and ours drop it) and the frames must be equal.
Polars runs on one thread (`POLARS_MAX_THREADS=1`).

    .venv/bin/python benchmarks/binning.py [--quick] [--repeats N] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "POLARS_MAX_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import tonic  # noqa: E402

from spikestream import make_events  # noqa: E402
from spikestream.pipeline.binning import to_frames  # noqa: E402

TARGET_RATIO = 20.0
TARGET_EVLIB = 3.0


def evlib_frames(ev: np.ndarray, width: int, height: int, window_us: int, n_frames: int):
    """A callable giving evlib's frames of `ev` (the first `n_frames` windows), or the reason
    evlib cannot run."""
    try:
        import evlib
        import polars as pl
    except ImportError as e:
        return f"evlib not installed ({e.name}): pip install spikestream[bench]"
    df = pl.DataFrame({"x": ev["x"], "y": ev["y"], "polarity": ev["p"],
                       "t": pl.Series(ev["t"]).cast(pl.Duration("us"))})

    def run() -> np.ndarray:
        long = evlib.create_stacked_histogram(df, height, width, bins=n_frames,
                                              window_duration_ms=window_us / 1000)
        return evlib.densify_event_frame(long, n_frames, 2, height, width)

    return run


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
             repeats: int, with_evlib: bool = True) -> dict:
    ev = synthetic_events(n, width, height, duration_us)
    sensor = (width, height, 2)
    tonic_transform = tonic.transforms.ToFrame(sensor_size=sensor, time_window=window_us)
    n_frames = len(to_frames(ev, sensor, time_window=window_us))  # also compiles the kernel
    evlib_run = evlib_frames(ev, width, height, window_us, n_frames) if with_evlib else \
        "not asked (--no-evlib)"
    ours_s = tonic_s = evlib_s = float("inf")
    for _ in range(repeats):  # interleaved, best of each: all see the same machine load
        s, ours = timed(lambda: to_frames(ev, sensor, time_window=window_us))
        ours_s = min(ours_s, s)
        s, ref = timed(lambda: tonic_transform(ev))
        tonic_s = min(tonic_s, s)
        if not np.array_equal(ours, ref):
            raise SystemExit(f"frames differ from Tonic's at {width}x{height}")
        del ref
        if callable(evlib_run):
            s, ref = timed(evlib_run)
            evlib_s = min(evlib_s, s)
            if not np.array_equal(ours, ref):
                raise SystemExit(f"frames differ from evlib's at {width}x{height}")
            del ref
        del ours
    return {
        "sensor": f"{width}x{height}",
        "events": n,
        "frames": n_frames,
        "ours_s": ours_s,
        "tonic_s": tonic_s,
        "ours_mev_s": n / ours_s / 1e6,
        "tonic_mev_s": n / tonic_s / 1e6,
        "ratio": tonic_s / ours_s,
        "evlib_s": evlib_s if callable(evlib_run) else None,
        "evlib_mev_s": n / evlib_s / 1e6 if callable(evlib_run) else None,
        "ratio_evlib": evlib_s / ours_s if callable(evlib_run) else None,
        "evlib_note": None if callable(evlib_run) else evlib_run,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 million events over 1 s")
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--no-evlib", action="store_true", help="leave evlib out")
    args = ap.parse_args()
    n, duration = (1_000_000, 1_000_000) if args.quick else (10_000_000, 10_000_000)
    results = [run_case(n, w, h, duration, 10_000, args.repeats, not args.no_evlib)
               for w, h in ((128, 128), (346, 260))]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'sensor':>8} {'events':>10} {'frames':>6} {'ours M ev/s':>12} "
              f"{'Tonic M ev/s':>13} {'x Tonic':>8} {'evlib M ev/s':>13} {'x evlib':>8}")
        for r in results:
            ev_rate = f"{r['evlib_mev_s']:13.2f}" if r["evlib_s"] else f"{'-':>13}"
            ev_ratio = f"{r['ratio_evlib']:7.1f}x" if r["evlib_s"] else f"{'-':>8}"
            print(f"{r['sensor']:>8} {r['events']:>10} {r['frames']:>6} {r['ours_mev_s']:>12.1f} "
                  f"{r['tonic_mev_s']:>13.1f} {r['ratio']:>7.1f}x {ev_rate} {ev_ratio}")
            if r["evlib_note"]:
                print(f"evlib: {r['evlib_note']}")
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
        print(f"target: >= {TARGET_RATIO:.0f}x Tonic's ToFrame on one core; "
              f"{'met' if min(r['ratio'] for r in results) >= TARGET_RATIO else 'NOT met'}")
        if all(r["evlib_s"] for r in results):
            met = min(r["ratio_evlib"] for r in results) >= TARGET_EVLIB
            print(f"target: >= {TARGET_EVLIB:.0f}x evlib's stacked histogram on one core; "
                  f"{'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
