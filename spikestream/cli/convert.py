"""`spikestream convert IN OUT`: stream any supported event file into our HDF5 layout
(`OUT.h5`/`.hdf5`) or a numpy structured array (`OUT.npy`; it holds no sensor size, so
readers take it from the events' extent). Any other output extension is refused.

The output is written to a temporary file in the same folder and renamed on success: a failure
never leaves a partial file, nor clobbers an existing one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from spikestream.datasets import Recorder, iter_events
from spikestream.events import EVENT_DTYPE

OUTPUTS = {".h5": "hdf5", ".hdf5": "hdf5", ".npy": "npy"}


def output_format(dst: str | Path) -> str:
    """`hdf5` or `npy` by the output's extension; a clear error for anything else."""
    ext = Path(dst).suffix.lower()
    if ext not in OUTPUTS:
        raise ValueError(f"{dst}: cannot write {ext or 'files without an extension'}; "
                         f"convert writes {', '.join(OUTPUTS)}")
    return OUTPUTS[ext]


def convert(src: str, dst: str, *, format: str | None = None, chunk_events: int = 1 << 20,
            progress: bool = True) -> int:
    """Copy `src` into `dst` (HDF5 streamed packet by packet, or `.npy`); returns the event
    count. Written to a temporary file beside `dst` and renamed when complete."""
    kind = output_format(dst)
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
            if kind == "hdf5":
                meta = dict(stream.metadata, source=str(src), source_format=stream.format)
                meta = {k: v for k, v in meta.items()
                        if isinstance(v, (str, int, float, bool, list))}
                with Recorder(tmp, stream.sensor_size, metadata=meta, flush_every=0) as rec:
                    for packet in stream:
                        rec.append(packet)
                        bar.advance(task, len(packet))
                    n = len(rec)
            else:
                packets = []
                for packet in stream:
                    packets.append(np.asarray(packet, dtype=EVENT_DTYPE))
                    bar.advance(task, len(packet))
                events = np.concatenate(packets) if packets else np.zeros(0, EVENT_DTYPE)
                with open(tmp, "wb") as f:
                    np.save(f, events, allow_pickle=False)
                n = len(events)
        os.replace(tmp, dst_p)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def run(args: argparse.Namespace) -> int:
    n = convert(args.input, args.output, format=args.format,
                progress=not args.quiet and sys.stderr.isatty())
    print(f"wrote {n} events to {args.output} ({output_format(args.output)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an event file to HDF5 (.h5) or numpy (.npy)",
                       description=__doc__)
    p.add_argument("input", help="event file in any supported format")
    p.add_argument("output", help="output file: .h5 / .hdf5 (our HDF5 layout) or .npy")
    p.add_argument("--format", default=None, help="force the input format")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
