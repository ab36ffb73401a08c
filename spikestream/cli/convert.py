"""`spikestream convert IN OUT.h5`: stream any supported event file into our HDF5 layout."""

from __future__ import annotations

import argparse
import sys

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from spikestream.datasets import Recorder, iter_events


def convert(src: str, dst: str, *, format: str | None = None, chunk_events: int = 1 << 20,
            progress: bool = True) -> int:
    """Copy `src` into `dst` (our HDF5 layout) packet by packet; returns the event count."""
    with iter_events(src, chunk_events=chunk_events, format=format) as stream:
        meta = dict(stream.metadata, source=str(src), source_format=stream.format)
        meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list))}
        with Recorder(dst, stream.sensor_size, metadata=meta, flush_every=0) as rec, Progress(
            SpinnerColumn(), TextColumn("{task.description}"),
            TextColumn("{task.completed:,.0f} events"), TimeElapsedColumn(),
            transient=True, disable=not progress,
        ) as bar:
            task = bar.add_task(f"converting {src}", total=None)
            for packet in stream:
                rec.append(packet)
                bar.advance(task, len(packet))
            return len(rec)


def run(args: argparse.Namespace) -> int:
    n = convert(args.input, args.output, format=args.format,
                progress=not args.quiet and sys.stderr.isatty())
    print(f"wrote {n} events to {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an event file to spikestream's HDF5 layout")
    p.add_argument("input", help="event file in any supported format")
    p.add_argument("output", help="output .h5 file")
    p.add_argument("--format", default=None, help="force the input format")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
