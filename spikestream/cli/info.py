"""`spikestream info PATH... [--json] [--plot OUT.png]`: format, event count, sensor size and
time span of each file; `--plot` draws rate, spatial histogram and time surface."""

from __future__ import annotations

import argparse
from typing import Any

from spikestream.cli.output import print_fields
from spikestream.datasets import iter_events


def summarize(path: str, format: str | None = None) -> dict[str, Any]:
    """Stream the file once and summarise it (never loads it whole)."""
    n = on = 0
    t0 = t1 = None
    with iter_events(path, format=format, chunk_events=1 << 20) as stream:
        for packet in stream:
            if t0 is None:
                t0 = int(packet["t"][0])
            t1 = int(packet["t"][-1])
            n += len(packet)
            on += int(packet["p"].sum())
        w, h, _ = stream.sensor_size
        info: dict[str, Any] = {
            "format": stream.format,
            "events": n,
            "width": w,
            "height": h,
            "t_start_us": t0,
            "t_end_us": t1,
            "duration_s": None if t0 is None else (t1 - t0) / 1e6,
            "on_fraction": None if n == 0 else on / n,
            "sensor_size_inferred": bool(stream.metadata.get("sensor_size_inferred", False)),
        }
    return info


def run(args: argparse.Namespace) -> int:
    for i, path in enumerate(args.path):
        fields = summarize(path, args.format)
        if len(args.path) > 1:
            fields = {"path": path, **fields}
            if i and not args.json:
                print()
        print_fields(fields, as_json=args.json)
    if args.plot:
        from spikestream.cli.info_plot import plot_files

        plot_files(args.path, args.plot, format=args.format)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an event file (format, events, size, time span)")
    p.add_argument("path", nargs="+",
                   help="event files (AEDAT 2/3.1/4, EVT2/3, DAT, .bin/.bs2, HDF5, npy/npz)")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.add_argument("--plot", metavar="OUT.png",
                   help="draw event rate (ON/OFF), events per pixel and the last 50 ms")
    p.add_argument("--format", default=None, help="force a format instead of detecting it")
    p.set_defaults(func=run)
