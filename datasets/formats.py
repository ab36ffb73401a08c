"""The registry of event-file formats: each format module registers one `Format` entry.

A `Format` says how a file is recognised (`sniff`: magic bytes or header, else `extensions`),
how it is streamed (`open`) and, where the format has one, how it is written (`write`).
`read_events`, `iter_events`, `write_events` and `detect_format` look formats up here; adding a
format is one module that calls `register_format` (listed in `BUILTIN_MODULES`) and its test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.events import EventFormatError, Recording, SensorSize

#: (sensor size or None, packets of (events, byte offsets or None), metadata)
Opened = tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]
Opener = Callable[[Path, int], Opened]
Sniffer = Callable[[Path, bytes], bool]
Writer = Callable[[Path, Recording], None]

#: Modules that register the built-in formats, in detection order.
BUILTIN_MODULES = ("aedat2", "aedat3", "aedat4", "prophesee", "nbin", "hdf5", "npy", "csv_text")

#: Bytes of a file's start that sniffers see.
HEAD_BYTES = 4096


@dataclass(frozen=True)
class Format:
    """One supported format: how it is recognised, who decodes it, how it is streamed."""

    name: str
    extensions: tuple[str, ...]
    magic: str  # what `sniff` looks for, in words
    decoder: str
    streaming: str
    open: Opener
    sniff: Sniffer | None = None  # None: recognised by extension only
    write: Writer | None = None
    #: (max x, max y) of the events -> (W, H), for a file whose header names no size
    size_from_extent: Callable[[int, int], tuple[int, int]] | None = None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a format; a name may be registered once."""
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


_loaded: list[bool] = []


def _load_builtin() -> None:
    if _loaded:  # every read looks formats up: the imports below cost more than a small read
        return
    for name in BUILTIN_MODULES:
        importlib.import_module(f"spikestream.datasets.{name}")
    _loaded.append(True)


def get_format(name: str) -> Format:
    """The registered format `name`, or `ValueError` listing the known ones."""
    _load_builtin()
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; one of {sorted(FORMATS)}")
    return FORMATS[name]


def detect_format(path: str | Path) -> str:
    """The name of `path`'s format: by magic bytes / header, else by extension."""
    _load_builtin()
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    for fmt in FORMATS.values():
        if fmt.sniff is not None and fmt.sniff(path, head):
            return fmt.name
    suffix = path.suffix.lower()
    by_ext = [f for f in FORMATS.values() if suffix in f.extensions]
    for fmt in by_ext:
        if fmt.sniff is None:
            return fmt.name
    if by_ext:
        raise EventFormatError(path, f"content does not match its {suffix} extension", offset=0,
                               expected=f"the magic bytes of a {suffix} file")
    raise EventFormatError(path, f"unknown format (extension {suffix!r})", offset=0,
                           expected="one of " + ", ".join(sorted(FORMATS)))


def writable_format(path: str | Path, format: str | None = None) -> Format:
    """The format to write `path` in: `format`, else its extension's, else our HDF5 layout."""
    _load_builtin()
    if format is None:
        suffix = Path(path).suffix.lower()
        named = [f for f in FORMATS.values() if suffix in f.extensions]
        writers = [f.name for f in named if f.write is not None]
        format = writers[0] if writers else named[0].name if named else "hdf5"
    fmt = get_format(format)
    if fmt.write is None:
        raise ValueError(f"format {format!r} has no writer; writable: "
                         + ", ".join(sorted(n for n, f in FORMATS.items() if f.write)))
    return fmt


_load_builtin()  # after the definitions above, which the format modules import
