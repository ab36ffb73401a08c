"""Plain CSV event files: a header line naming the columns (`t,x,y,p`, any order; `ts` for t,
`on`/`polarity` for p), then one event per line in integers (t in µs, p 0/1 or -1/1).

What faery, Metavision's `metavision_file_to_csv` and many scripts write. Read in chunks of
`chunk_events` lines (numpy's C parser); the sensor size is not stored, so readers take it
from the events' extent, as for `.npy`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.events import EventFormatError, Recording, SensorSize, checked_events

#: column names accepted for each field (lower case)
ALIASES = {"t": ("t", "ts", "timestamp"), "x": ("x",), "y": ("y",),
           "p": ("p", "on", "polarity", "pol")}
HEADER = "t,x,y,p"


def _columns(header: str, path: Path) -> dict[str, int]:
    names = [n.strip().lower() for n in header.split(",")]
    cols = {}
    for field, aliases in ALIASES.items():
        hit = [i for i, n in enumerate(names) if n in aliases]
        if not hit:
            raise EventFormatError(path, f"CSV header {header.strip()!r} names no {field!r} "
                                   "column", offset=0, expected=f"a header such as {HEADER}")
        cols[field] = hit[0]
    return cols


def sniff(path: Path, head: bytes) -> bool:
    """A first line of comma-separated names that include t, x, y and p (or their aliases)."""
    line = head.split(b"\n", 1)[0].decode("ascii", "replace").strip().lower()
    names = {n.strip() for n in line.split(",")}
    return len(names) >= 4 and all(names & set(a) for a in ALIASES.values())


def open_source(path: Path, chunk_events: int
                ) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]],
                           dict[str, Any]]:
    """No sensor size (the events' extent gives it), packets of `chunk_events` lines."""
    with open(path, encoding="ascii", errors="replace") as f:
        header = f.readline()
    cols = _columns(header, path)
    width = len(header.split(","))

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        first = 0
        with open(path, encoding="ascii") as f:
            f.readline()
            while lines := list(itertools.islice(f, chunk_events)):
                try:
                    rows = np.loadtxt(lines, delimiter=",", dtype=np.int64, ndmin=2)
                except ValueError as e:
                    raise EventFormatError(path, f"CSV line: {e}", record=first,
                                           expected=f"{width} integer columns") from e
                if rows.shape[1] != width:
                    raise EventFormatError(path, f"{rows.shape[1]} columns", record=first,
                                           expected=f"{width} columns as the header names")
                p = rows[:, cols["p"]]
                if len(p) and not np.isin(p, (-1, 0, 1)).all():
                    i = int(np.flatnonzero(~np.isin(p, (-1, 0, 1)))[0])
                    raise EventFormatError(path, f"polarity {int(p[i])}", record=first + i,
                                           expected="p in {0, 1} or {-1, 1}")
                ev = checked_events(rows[:, cols["x"]], rows[:, cols["y"]], rows[:, cols["t"]],
                                    p > 0, source=path, first=first)
                first += len(ev)
                yield ev, None

    return None, packets(), {"columns": header.strip()}


def write_csv(path: Path, recording: Recording) -> None:
    """`t,x,y,p` with a header line, one event per line (numpy's `savetxt`)."""
    ev = recording.events
    table = np.stack([ev["t"], ev["x"].astype(np.int64), ev["y"].astype(np.int64),
                      ev["p"].astype(np.int64)], axis=1)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",", header=HEADER, comments="")


register_format(Format(
    "csv", (".csv",), "a header line naming t, x, y, p", "numpy", "chunked (lines)",
    open=open_source, sniff=sniff, write=write_csv))
