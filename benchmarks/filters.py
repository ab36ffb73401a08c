"""Time the noise filters against tonic's `Denoise` and `RefractoryPeriod` on the same events.

The real 240x180 rotating-disk recording (374,296 events) when `../shared/data` or
`$SPIKESTREAM_REAL_DATA` is there, else 1 million synthetic events on a 240x180 sensor
(`--quick`: 200,000). Both sides give the same events (checked). Prints events/s and the ratio.

    .venv/bin/python benchmarks/filters.py [--quick] [--repeats N] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tonic  # noqa: E402

from spikestream import make_events  # noqa: E402
from spikestream.devices.filters import background_activity, refractory  # noqa: E402


def load_events(quick: bool) -> tuple[np.ndarray, tuple[int, int, int], str]:
    root = Path(os.environ.get("SPIKESTREAM_REAL_DATA",
                               Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    path = root / "aedat2" / "IMU_rotDisk.aedat"
    if path.is_file():
        from spikestream.datasets import read_events

        rec = read_events(path)
        ev = rec.events[rec.events["t"] > 20_000]  # tonic's start-up conventions agree here
        return (ev[:200_000] if quick else ev), rec.sensor_size, path.name
    n = 200_000 if quick else 1_000_000
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(20_001, 20_001 + n, n))
    ev = make_events(rng.integers(0, 240, n), rng.integers(0, 180, n), t, rng.integers(0, 2, n))
    return ev, (240, 180, 2), "synthetic"


def best_of(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ev, sensor, source = load_events(args.quick)
    background_activity(ev[:100], sensor, 5_000, 4)  # compile first
    refractory(ev[:100], sensor, 1_000)
    cases = {
        "background activity (Denoise, 5 ms, 4 neighbours)": (
            lambda: background_activity(ev, sensor, 5_000, neighbours=4),
            lambda: tonic.transforms.Denoise(filter_time=5_000)(ev)),
        "refractory (RefractoryPeriod, 10 ms)": (
            lambda: refractory(ev, sensor, 10_000),
            lambda: tonic.transforms.RefractoryPeriod(delta=10_000)(ev)),
    }
    rows = []
    for name, (ours, theirs) in cases.items():
        t_ours, a = best_of(ours, args.repeats)
        t_tonic, b = best_of(theirs, 1 if not args.quick else args.repeats)
        if not np.array_equal(a, b):
            raise SystemExit(f"{name}: outputs differ ({len(a)} vs {len(b)} events)")
        rows.append({"filter": name, "events": len(ev), "kept": len(a),
                     "ours_ev_per_s": len(ev) / t_ours, "tonic_ev_per_s": len(ev) / t_tonic,
                     "ratio": t_tonic / t_ours})
    if args.json:
        print(json.dumps({"source": source, "rows": rows}))
        return
    print(f"{source}: {len(ev):,} events, sensor {sensor[0]}x{sensor[1]}, one core")
    for r in rows:
        print(f"{r['filter']:<52} ours {r['ours_ev_per_s'] / 1e6:8.1f} M ev/s   tonic "
              f"{r['tonic_ev_per_s'] / 1e6:6.3f} M ev/s   ratio {r['ratio']:7.0f}x   "
              f"(kept {r['kept']:,})")


if __name__ == "__main__":
    main()
