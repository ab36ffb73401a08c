"""AEDAT 2.0 (jAER) reader for DAVIS cameras: our own vectorised decoder.

Layout: `#` text header lines (the first is `#!AER-DAT2.0`), then big-endian pairs of int32
address and int32 timestamp (µs). DAVIS chips mix DVS events with APS (frame ADC) and IMU words;
jAER's `DavisChip` tells them apart by bit 31 (0: DVS, 1: APS/IMU) and bit 10 of a DVS word
(external input / special event). A DVS address holds y in bits 22-30, x in bits 12-21 and the
polarity in bit 11. jAER puts y = 0 at the bottom row; we flip y to the image convention of
Tonic (y = 0 at the top), so our y is `H - 1 - y_jaer` (the MATLAB export `rotDisk.mat` keeps
jAER's y). No library reads DAVIS AEDAT 2.0 with APS/IMU words correctly into events (Tonic has
per-chip readers that do not separate APS/IMU words), hence this decoder.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.textheader import aedat_version, read_text_header
from spikestream.datasets.timestamps import MAX_STEP_32BIT_US, check_steps
from spikestream.events import EVENT_DTYPE, EventFormatError, SensorSize

#: jAER AEChip class-name fragments -> (width, height), for chips with the DAVIS address layout.
DAVIS_CHIPS: dict[str, tuple[int, int]] = {
    "DAVIS240": (240, 180),
    "DAVIS346": (346, 260),
}

_WORD = np.dtype([("addr", ">u4"), ("ts", ">u4")])
_TYPE_MASK = 1 << 31
_SPECIAL_MASK = 1 << 10


def parse_header(path: Path) -> tuple[int, list[str]]:
    """Return (byte offset of the first binary word, header lines without the leading `#`)."""
    return read_text_header(path, b"#")


def chip_size(lines: list[str], path: Path) -> tuple[str, str, tuple[int, int]]:
    """The AEChip named in the header, the known chip it is taken for, and its (width, height)."""
    chip = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(" AEChip:")), None)
    if chip is None:
        raise EventFormatError(path, "no '# AEChip:' header line", expected="a DAVIS AEChip line")
    for key, size in DAVIS_CHIPS.items():
        if key.lower() in chip.lower():
            return chip, key, size
    raise EventFormatError(
        path, f"AEChip {chip!r} has no known DAVIS address layout",
        expected=f"one of {sorted(DAVIS_CHIPS)}",
    )


def decode_words(
    words: np.ndarray, height: int, ts_base: int, prev_ts: int | None
) -> tuple[np.ndarray, np.ndarray, int, int | None]:
    """Decode a block of (addr, ts) words; returns events, their word indices, new wrap base and
    the last raw timestamp (for int32 wrap detection across blocks)."""
    addr = words["addr"]
    keep = np.flatnonzero((addr & (_TYPE_MASK | _SPECIAL_MASK)) == 0)
    a = addr[keep]
    ts = words["ts"][keep].astype(np.int64)
    # jAER timestamps are int32 µs and wrap after 2^32 µs (as unsigned); a drop of more than half
    # the range is a wrap (defined by the format), any other drop is left for the order check,
    # and the caller refuses a step over half the range (`timestamps.check_steps`).
    if len(ts):
        prev = np.concatenate(([ts[0] if prev_ts is None else prev_ts], ts[:-1]))
        wraps = np.cumsum((prev - ts) > (1 << 31))
        last_raw = int(ts[-1])
        ts = ts + (ts_base + (wraps << 32))
        ts_base = ts_base + (int(wraps[-1]) << 32)
        prev_ts = last_raw
    raw_y = ((a >> 22) & 0x1FF).astype(np.int64)
    ev = np.empty(len(a), dtype=EVENT_DTYPE)
    ev["x"] = (a >> 12) & 0x3FF
    ev["y"] = np.clip((height - 1) - raw_y, 0, None)
    ev["t"] = ts
    ev["p"] = (a >> 11) & 1
    bad = np.flatnonzero(raw_y >= height)
    if bad.size:  # keep the raw value visible to the caller's range check
        ev["y"][bad] = raw_y[bad]
    return ev, keep, ts_base, prev_ts


#: Events from which a recording whose addresses all fit a smaller chip is suspicious.
SUSPICIOUS_EVENTS = 10_000


def _warn_if_smaller_chip(path: Path, key: str, size: tuple[int, int], max_x: int, max_y: int,
                          n: int) -> None:
    """Warn when every address of a long recording fits a smaller known chip than the one the
    header names: y was flipped against the named chip's rows, which is then likely wrong."""
    smaller = [k for k, (w, h) in DAVIS_CHIPS.items()
               if w <= size[0] and h <= size[1] and max_x < w and max_y < h and k != key]
    if smaller and n >= SUSPICIOUS_EVENTS:
        warnings.warn(
            f"{path}: AEChip names {key} ({size[0]}x{size[1]}), but all {n} addresses fit "
            f"{smaller[0]} {DAVIS_CHIPS[smaller[0]]}; y was flipped against {size[1]} rows as "
            f"the header says (pass a corrected header if the chip is {smaller[0]})",
            RuntimeWarning, stacklevel=2)


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size, a generator of (events, byte offsets) and metadata of an AEDAT 2.0 file."""
    start, lines = parse_header(path)
    if not lines or not lines[0].startswith("!AER-DAT2"):
        raise EventFormatError(path, "not an AEDAT 2.0 file", offset=0, expected="#!AER-DAT2.0")
    chip, chip_key, (w, h) = chip_size(lines, path)
    size = path.stat().st_size
    if (size - start) % _WORD.itemsize:
        bad = start + ((size - start) // _WORD.itemsize) * _WORD.itemsize
        raise EventFormatError(
            path, f"truncated: {size - bad} stray bytes after the last whole word",
            offset=bad, expected="8-byte address/timestamp words",
        )

    assumed = f"{chip_key} ({w}x{h}, named by AEChip {chip!r})"

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        base, prev = 0, None
        last_t: int | None = None
        pos = start
        mx = my = n = 0
        with open(path, "rb") as f:
            f.seek(start)
            while buf := f.read(chunk_events * _WORD.itemsize):
                words = np.frombuffer(buf, dtype=_WORD)
                ev, keep, base, prev = decode_words(words, h, base, prev)
                offs = pos + keep.astype(np.int64) * _WORD.itemsize
                bad = np.flatnonzero((ev["x"] >= w) | (ev["y"] >= h))
                if bad.size:
                    i = int(bad[0])
                    a = int(words["addr"][keep[i]])
                    raise EventFormatError(
                        path, f"DVS address x={(a >> 12) & 0x3FF}, y={(a >> 22) & 0x1FF} "
                        f"outside the sensor of the chip assumed, {assumed}",
                        offset=int(offs[i]), expected=f"x < {w}, y < {h}")
                check_steps(path, ev["t"], last_t, MAX_STEP_32BIT_US, first=n, offsets=offs)
                if len(ev):
                    mx, my = max(mx, int(ev["x"].max())), max(my, h - 1 - int(ev["y"].min()))
                    n += len(ev)
                    last_t = int(ev["t"][-1])
                pos += len(buf)
                yield ev, offs
        _warn_if_smaller_chip(path, chip_key, (w, h), mx, my, n)

    meta = {"chip": chip, "chip_assumed": chip_key, "header_bytes": start}
    return (w, h, 2), packets(), meta


register_format(Format(
    "aedat2", (".aedat", ".aedat2"), "#!AER-DAT2", "own (jAER DAVIS layout)", "chunked reads",
    open=open_source, sniff=lambda path, head: aedat_version(path, head) == "2"))
