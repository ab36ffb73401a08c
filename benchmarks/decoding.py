"""Time `read_events` against the decoders it wraps and against evlib and faery, same files.

Files: the real recordings in `$SPIKESTREAM_REAL_DATA` (default `../shared/data`): Prophesee
EVT 3.0 (`prophesee/evt3_sample.raw`), DAT (`prophesee/dat_test_NCARS.dat`) and AEDAT 4
(`aedat4/sample.aedat4`); plus large EVT 2.0 and EVT 3.0 files this script writes with faery's
encoder (uniformly random events on a 1280x720 sensor, 10 million by default, `--quick` 1
million) into a temporary folder.

Each reader decodes the whole file into memory, in its own output form:
- ours: `read_events(path)`, a `Recording` of `EVENT_DTYPE` (format detected, every event
  checked for time order and sensor bounds, timestamp-overflow repairs checked), with the
  compiled decoders loaded (imported above: numba's start-up, about 1 s, is paid once a
  process, as the peers' imports are, which are not timed either; a process that has not
  loaded numba decodes small files in numpy, see `datasets/decoder_choice.py`);
- expelliarmus `Wizard(encoding).read()` (EVT2/DAT; for EVT3 its timestamps do not follow the
  format) and aedat `Decoder` with its packets concatenated (AEDAT 4, the library
  `read_events` wraps; Prophesee files are decoded by our own compiled decoders);
- evlib: `load_events(path).collect()` (a polars DataFrame; polars on one thread);
- faery: `events_stream_from_file(path).to_array()` (a numpy structured array).
The figure is the best of `--repeats` interleaved runs, in million events per second, and
ours over the fastest peer (target >= 0.9). Every peer must decode the same number of events,
and the same (t, x, y, p) as ours where it reads them as we do.

    .venv/bin/python benchmarks/decoding.py [--quick] [--repeats N] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "POLARS_MAX_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from spikestream.datasets import compiled_decoders, read_events  # noqa: E402, F401

TARGET = 0.9
REAL = (("prophesee/evt3_sample.raw", "evt3"), ("prophesee/dat_test_NCARS.dat", "dat"),
        ("aedat4/sample.aedat4", "aedat4"))


def data_root() -> Path:
    return Path(os.environ.get("SPIKESTREAM_REAL_DATA", "../shared/data"))


def as_columns(t, x, y, p) -> dict[str, np.ndarray]:
    return {"t": np.asarray(t, np.int64), "x": np.asarray(x, np.int64),
            "y": np.asarray(y, np.int64), "p": (np.asarray(p) > 0).astype(np.int64)}


def ours(path: Path) -> Callable[[], dict]:
    def run() -> dict:
        ev = read_events(path).events
        return as_columns(ev["t"], ev["x"], ev["y"], ev["p"])
    return run


def wrapped(path: Path, kind: str) -> Callable[[], dict]:
    """The format's own library (aedat for AEDAT 4, which `read_events` wraps; expelliarmus for
    the Prophesee formats), called directly."""
    if kind == "aedat4":
        import aedat

        def run_aedat() -> dict:
            parts = [p["events"] for p in aedat.Decoder(str(path)) if "events" in p]
            ev = np.concatenate(parts)
            return as_columns(ev["t"], ev["x"], ev["y"], ev["on"])
        return run_aedat
    from expelliarmus import Wizard

    def run_expelliarmus() -> dict:
        ev = Wizard(encoding=kind, fpath=path).read()
        return as_columns(ev["t"], ev["x"], ev["y"], ev["p"])
    return run_expelliarmus


def evlib_reader(path: Path) -> Callable[[], dict] | str:
    try:
        import evlib
    except ImportError:
        return "evlib not installed (pip install spikestream[bench])"

    def run() -> dict:
        df = evlib.load_events(str(path)).collect()
        return as_columns(df["t"].cast(int).to_numpy(), df["x"].to_numpy(), df["y"].to_numpy(),
                          df["polarity"].to_numpy())
    return run


def faery_reader(path: Path) -> Callable[[], dict] | str:
    try:
        import faery
    except ImportError:
        return "faery not installed (pip install spikestream[bench])"

    def run() -> dict:
        ev = faery.events_stream_from_file(path).to_array()
        return as_columns(ev["t"], ev["x"], ev["y"], ev["on"])
    return run


def synthesise(folder: Path, n: int) -> list[tuple[Path, str, dict | None]]:
    """EVT 2.0 and EVT 3.0 files of `n` random events (1280x720, 1 event per µs on average),
    written by faery's encoder, with the events written; none when faery is missing."""
    try:
        import faery
    except ImportError:
        return []
    rng = np.random.default_rng(0)
    ev = np.zeros(n, faery.EVENTS_DTYPE)
    ev["t"] = np.sort(rng.integers(0, n, n))
    ev["x"], ev["y"] = rng.integers(0, 1280, n), rng.integers(0, 720, n)
    ev["on"] = rng.integers(0, 2, n).astype(bool)
    out = []
    for version, kind in (("evt2", "evt2"), ("evt3", "evt3")):
        path = folder / f"random_{kind}.raw"
        faery.events_stream_from_array(ev, (1280, 720)).to_file(path, version=version,
                                                                 zero_t0=False)
        out.append((path, kind, as_columns(ev["t"], ev["x"], ev["y"], ev["on"])))
    return out


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("t", "x", "y", "p"))


def run_file(path: Path, kind: str, repeats: int, written: dict | None = None) -> dict:
    """Time every reader on one file; `written`: the events a synthesised file holds."""
    readers: dict[str, Callable[[], dict] | str] = {
        "ours": ours(path),
        "expelliarmus" if kind != "aedat4" else "aedat": wrapped(path, kind),
        "evlib": evlib_reader(path),
        "faery": faery_reader(path),
    }
    best: dict[str, float] = {}
    notes: dict[str, str] = {}
    agree: dict[str, bool] = {}
    ref = None
    for name, fn in list(readers.items()):  # first run: outputs checked, failures noted
        if isinstance(fn, str):
            notes[name] = fn
            continue
        try:
            got = fn()
        except Exception as e:  # a peer that cannot read this file
            notes[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
            readers[name] = notes[name]
            continue
        if ref is None:
            ref = got
        if len(got["t"]) != len(ref["t"]):
            notes[name] = f"{len(got['t'])} events, ours {len(ref['t'])}"
            readers[name] = notes[name]
            continue
        agree[name] = same(got, ref)
        if written is not None:
            agree[f"{name} = written"] = len(got["t"]) == len(written["t"]) and same(got, written)
    n = len(ref["t"])
    for _ in range(repeats):
        for name, fn in readers.items():
            if isinstance(fn, str):
                continue
            start = time.perf_counter()
            fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    peers = {k: v for k, v in best.items() if k != "ours"}
    fastest = min(peers, key=peers.get) if peers else None
    return {
        "file": path.name, "format": kind, "events": n, "bytes": path.stat().st_size,
        "mev_s": {k: n / v / 1e6 for k, v in best.items()},
        "same_events": agree, "notes": notes, "fastest_peer": fastest,
        "ratio": best[fastest] / best["ours"] if fastest else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 million synthesised events")
    ap.add_argument("--repeats", type=int, default=5, help="best of N runs (default 5)")
    ap.add_argument("--events", type=int, default=None, help="events in the synthesised files")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.events or (1_000_000 if args.quick else 10_000_000)
    root = data_root()
    files = [(root / rel, kind, None) for rel, kind in REAL if (root / rel).is_file()]
    missing = [rel for rel, _ in REAL if not (root / rel).is_file()]
    results = []
    with tempfile.TemporaryDirectory(prefix="spikestream-bench-") as tmp:
        files += synthesise(Path(tmp), n)
        for path, kind, written in files:
            results.append(run_file(path, kind, args.repeats, written))
            if not args.json:
                print_row(results[-1])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if missing:
        print(f"missing real files (set SPIKESTREAM_REAL_DATA): {', '.join(missing)}")
    ratios = [r["ratio"] for r in results if r["ratio"] is not None]
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    if ratios:
        print(f"target: ours >= {TARGET}x the fastest peer on every file: "
              f"{'met' if min(ratios) >= TARGET else 'NOT met'} (lowest {min(ratios):.2f}x)")
    return 0


def print_row(r: dict) -> None:
    rates = "  ".join(f"{k} {v:7.1f}" for k, v in r["mev_s"].items())
    print(f"{r['file']:<22} {r['format']:>6} {r['events']:>10} events  M ev/s: {rates}  "
          f"ours / {r['fastest_peer']}: {r['ratio']:.2f}x", flush=True)
    diff = [k for k, ok in r["same_events"].items() if not ok and "=" not in k]
    if diff:
        print(f"    same event count, other values than ours: {', '.join(diff)}")
    written = [k.split()[0] for k, ok in r["same_events"].items() if ok and "=" in k]
    if any("=" in k for k in r["same_events"]):
        print(f"    decode exactly the events written: {', '.join(written) or 'none'}")
    for k, note in r["notes"].items():
        print(f"    {k}: {note}")


if __name__ == "__main__":
    raise SystemExit(main())
