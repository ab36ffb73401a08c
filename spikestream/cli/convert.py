"""`spikestream convert IN OUT`: any supported event file into any format with a writer, chosen
by OUT's extension (or `--to FORMAT`): our HDF5 layout (`.h5`/`.hdf5`, streamed packet by
packet), `.npy`, `.npz`, AEDAT 4 (`.aedat4`), Prophesee EVT 2.0 (`.raw`) and DAT (`.dat`), and
plain CSV (`.csv`: `t,x,y,p` with a header). EVT 3.0 is read, not written (see
`datasets/prophesee.py`).
Formats without a sensor size (`.npy`, `.csv`) are read back at the events' extent.

The output is written to a temporary file in the same folder and renamed on success: a failure
never leaves a partial file, nor clobbers an existing one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from spikestream import Recording
from spikestream.datasets import Recorder, iter_events, write_events
from spikestream.datasets.formats import FORMATS, writable_format
from spikestream.events import EVENT_DTYPE


def writable_extensions() -> list[str]:
    """Every output extension some registered writer takes."""
    return sorted({e for f in FORMATS.values() if f.write is not None for e in f.extensions})


def output_format(dst: str | Path, to: str | None = None) -> str:
    """The format `dst` is written in: `to`, else the first writer of its extension; a clear
    error for an extension no writer takes."""
    ext = Path(dst).suffix.lower()
    if to is None and ext not in writable_extensions():
        raise ValueError(f"{dst}: cannot write {ext or 'files without an extension'}; "
                         f"convert writes {', '.join(writable_extensions())}")
    return writable_format(dst, to).name


def convert(src: str, dst: str, *, format: str | None = None, to: str | None = None,
            chunk_events: int = 1 << 20, progress: bool = True,
            filter_spec: str | None = None) -> int:
    """Copy `src` into `dst` in the format `output_format(dst, to)` names; returns the event
    count. HDF5 is streamed packet by packet into a temporary file beside `dst`; the other
    writers take the whole recording (`write_events`, also through a temporary file).
    `filter_spec` (`devices.filters.filter_from_spec`) drops noise on the way, packet by packet
    with the filter's state carried across packets, so the result equals filtering the whole
    recording at once."""
    kind = output_format(dst, to)
    src_p, dst_p = Path(src), Path(dst)
    if dst_p.exists() and src_p.exists() and os.path.samefile(src_p, dst_p):
        raise ValueError(f"{dst}: the output is the input file; choose another output")
    if dst_p.is_dir():
        raise IsADirectoryError(f"{dst}: is a folder; give an output file name")
    tmp = dst_p.parent / f".{dst_p.name}.{os.getpid()}.tmp"
    try:
        with iter_events(src, chunk_events=chunk_events, format=format) as stream, Progress(
            SpinnerColumn(), TextColumn("{task.description}"),
            TextColumn("{task.completed:,.0f} events"), TimeElapsedColumn(),
            transient=True, disable=not progress,
        ) as bar:
            task = bar.add_task(f"converting {src}", total=None)
            packets = iter(stream)
            if filter_spec:
                from spikestream.devices.filters import filter_from_spec

                keep = filter_from_spec(filter_spec, stream.sensor_size)
                packets = (keep(packet) for packet in packets)
            if kind == "hdf5":
                meta = dict(stream.metadata, source=str(src), source_format=stream.format)
                meta = {k: v for k, v in meta.items()
                        if isinstance(v, (str, int, float, bool, list))}
                with Recorder(tmp, stream.sensor_size, metadata=meta, flush_every=0) as rec:
                    for packet in packets:
                        rec.append(packet)
                        bar.advance(task, len(packet))
                    n = len(rec)
                os.replace(tmp, dst_p)
            else:
                kept = []
                for packet in packets:
                    kept.append(np.asarray(packet, dtype=EVENT_DTYPE))
                    bar.advance(task, len(packet))
                events = np.concatenate(kept) if kept else np.zeros(0, EVENT_DTYPE)
                write_events(dst_p, Recording(events, stream.sensor_size), format=kind)
                n = len(events)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def run(args: argparse.Namespace) -> int:
    n = convert(args.input, args.output, format=args.format, to=args.to,
                progress=not args.quiet and sys.stderr.isatty(), filter_spec=args.filter)
    print(f"wrote {n} events to {args.output} ({output_format(args.output, args.to)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an event file to another format (by extension)",
                       description=__doc__)
    p.add_argument("input", help="event file in any supported format")
    p.add_argument("output", help="output file: .h5/.hdf5 (our HDF5 layout), .npy, .npz, "
                                  ".aedat4, .raw (EVT 2.0), .dat, .csv")
    p.add_argument("--format", default=None, help="force the input format")
    p.add_argument("--to", default=None, metavar="FORMAT",
                   help="output format instead of the extension's: hdf5, npy, npz, aedat4, "
                        "evt2, dat, csv")
    p.add_argument("--filter", metavar="SPEC",
                   help="drop noise on the way: comma-separated ba:FILTER_TIME_US[:4|8], "
                        "refractory:DELTA_US, hot:MAX_RATE_HZ[:LEARN_US] (as render --filter)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
