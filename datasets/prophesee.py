"""Prophesee EVT 2.0 / EVT 3.0 `.raw` and DAT files: EVT 2.0 and DAT via `expelliarmus`, EVT 3.0
by our own decoder (`datasets/evt3.py`: expelliarmus's EVT 3.0 timestamps do not follow the format).

expelliarmus needs the file to end in `.raw` (EVT) or `.dat` (DAT); a file with another name is
read through a hard link (or a temporary copy) with the right suffix. It reports errors by
printing and stopping early, so we check that it reached the end of the file and locate the first
bad word ourselves.
The sensor size comes from the `%` header (`% geometry WxH`, `% format ...;width=..;height=..`,
`% Width`/`% Height`, or a known plugin name); when the header names none it is inferred from the
events (metadata `sensor_size_inferred`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikestream.datasets.evt3 import iter_evt3
from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.native_output import quiet_next
from spikestream.datasets.textheader import read_text_header
from spikestream.datasets.timestamps import MAX_STEP_32BIT_US, check_steps
from spikestream.events import EventFormatError, Recording, SensorSize, checked_events

#: Prophesee HAL plugin-name fragments -> (width, height).
PLUGINS: dict[str, tuple[int, int]] = {
    "gen41": (1280, 720),
    "imx636": (1280, 720),
    "gen31": (640, 480),
    "gen3": (640, 480),
}

#: EVT 2.0 word types (top 4 bits) that expelliarmus decodes.
_EVT2_TYPES = (0x0, 0x1, 0x8)


def parse_header(path: Path) -> tuple[int, list[str]]:
    """Byte offset of the binary data and the `%` header lines (without `% `)."""
    pos, lines = read_text_header(path, b"%", end="end")
    return pos, [ln.strip() for ln in lines]


def encoding_of(lines: list[str], suffix: str) -> str | None:
    """'evt2', 'evt3' or 'dat' from the header lines (None when they do not say)."""
    for ln in lines:
        low = ln.lower().replace(" ", "")
        if low.startswith("evt3") or "format=evt3" in low or low.startswith("formatevt3"):
            return "evt3"
        if low.startswith("evt2") or "format=evt2" in low or low.startswith("formatevt2"):
            return "evt2"
        if "event2d" in low or "eventcd" in low:
            return "dat"
    return "dat" if suffix == ".dat" else None


def header_size(lines: list[str]) -> tuple[int, int] | None:
    """(width, height) named by the header, if any."""
    text = "\n".join(lines)
    m = re.search(r"geometry\s+(\d+)x(\d+)", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    w = re.search(r"width[=\s]+(\d+)", text, re.I)
    h = re.search(r"height[=\s]+(\d+)", text, re.I)
    if w and h:
        return int(w.group(1)), int(h.group(1))
    low = text.lower()
    for key, size in PLUGINS.items():
        if f"plugin_name hal_plugin_{key}" in low or f"hal_plugin_{key}_" in low:
            return size
    return None


def header_t0(lines: list[str]) -> int:
    """The time origin a `% t0 N` (EVT) or `% T0 N` (DAT) line names, added to every
    timestamp (as Metavision and faery write it for recordings past the 32-bit µs range); 0
    without one."""
    for ln in lines:
        m = re.fullmatch(r"t0\s+(\d+)", ln.strip(), re.I)
        if m:
            return int(m.group(1))
    return 0


def _first_bad_word(path: Path, start: int, encoding: str) -> int | None:
    """Byte offset of the first EVT 2.0 word whose type expelliarmus does not decode (read in
    chunks)."""
    dtype, shift, ok = np.dtype("<u4"), 28, _EVT2_TYPES
    pos = start
    with open(path, "rb") as f:
        f.seek(start)
        while buf := f.read((1 << 20) * dtype.itemsize):
            words = np.frombuffer(buf[: len(buf) // dtype.itemsize * dtype.itemsize], dtype)
            bad = np.flatnonzero(~np.isin(words >> shift, ok))
            if bad.size:
                return pos + int(bad[0]) * dtype.itemsize
            pos += len(buf)
    return None


def open_source(
    path: Path, chunk_events: int, encoding: str | None = None
) -> tuple[SensorSize | None, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size (None if the header names none), packets, metadata of an EVT2/EVT3/DAT file."""
    start, lines = parse_header(path)
    enc = encoding or encoding_of(lines, path.suffix.lower())
    if enc not in ("evt2", "evt3", "dat"):
        raise EventFormatError(path, "the '%' header names no event encoding",
                               expected="'% evt 2.0', '% evt 3.0' or format='evt3'/'evt2'/'dat'")
    size = path.stat().st_size
    body = start + (2 if enc == "dat" else 0)  # DAT: event type and size bytes follow the header
    if enc == "dat":
        with open(path, "rb") as f:
            f.seek(start)
            ts = f.read(2)
        if len(ts) < 2 or ts[1] != 8:
            raise EventFormatError(path, f"DAT event type/size bytes {ts!r}", offset=start,
                                   expected="event size 8")
    unit = {"evt3": 2, "evt2": 4, "dat": 8}[enc]
    if (size - body) % unit:
        bad = body + (size - body) // unit * unit
        raise EventFormatError(path, f"truncated: {size - bad} stray bytes after the last record",
                               offset=bad, expected=f"{unit}-byte words")
    wh = header_size(lines)
    t0 = header_t0(lines)

    def evt3_packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        first, last_t = 0, None
        for x, y, t, p in iter_evt3(path, body, chunk_words=max(chunk_events, 4096)):
            ev = checked_events(x, y, t, p, source=path, first=first, t_offset=t0)
            check_steps(path, ev["t"], last_t, MAX_STEP_32BIT_US, first=first)
            if len(ev):
                last_t = int(ev["t"][-1])
                first += len(ev)
                yield ev, None

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        suffix = ".dat" if enc == "dat" else ".raw"
        with contextlib.ExitStack() as stack:
            src = path
            if path.resolve().suffix != suffix:
                # expelliarmus resolves links and checks the suffix: hard link, else copy
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="spikestream-"))
                src = Path(tmp) / f"events{suffix}"
                try:
                    os.link(path.resolve(), src)
                except OSError:
                    shutil.copyfile(path, src)
            from expelliarmus import Wizard  # 0.5 s to import: only when a file needs it

            wizard = Wizard(encoding=enc, fpath=src, chunk_size=max(chunk_events, 16))
            first, last_t = 0, None
            chunks = wizard.read_chunk()
            while (arr := quiet_next(chunks)) is not None:  # it prints warnings on stdout
                ev = checked_events(arr["x"], arr["y"], arr["t"], arr["p"] > 0, source=path,
                                    first=first, t_offset=t0)
                check_steps(path, ev["t"], last_t, MAX_STEP_32BIT_US, first=first)
                if len(ev):
                    last_t = int(ev["t"][-1])
                first += len(ev)
                yield ev, None
            if not wizard.cargo.events_info.finished and size > body:
                at = _first_bad_word(path, body, enc) if enc == "evt2" else None
                raise EventFormatError(path, f"{enc.upper()} decoding stopped early", offset=at,
                                       expected=f"valid {enc.upper()} words")

    meta: dict[str, Any] = {"encoding": enc, "header": lines, "t0_us": t0}
    stream = evt3_packets() if enc == "evt3" else packets()
    return ((wh[0], wh[1], 2) if wh else None), stream, meta


def sniff_encoding(path: Path, head: bytes) -> str | None:
    """The encoding a `%` header names ('evt2', 'evt3', 'dat'); None for a file without one."""
    if not head.startswith(b"%"):
        return None
    _, lines = parse_header(path)
    enc = encoding_of(lines, path.suffix.lower())
    if enc is None:
        raise EventFormatError(path, "Prophesee '%' header names no encoding",
                               expected="'% evt 2.0' / '% evt 3.0', or pass format=")
    return enc


#: Largest coordinate each written encoding can hold (EVT 2.0 / 3.0: 11 bits; DAT: 14 bits), and
#: the largest timestamp we write (DAT: 32-bit µs; EVT kept to the same range).
MAX_COORD = {"evt2": 2047, "evt3": 2047, "dat": (1 << 14) - 1}
MAX_T = (1 << 32) - 1


def header_lines(encoding: str, width: int, height: int, t0: int = 0) -> list[str]:
    """The `%` header we write: the encoding, the geometry and the time origin, as Metavision
    (and faery) write them."""
    if encoding == "dat":
        return ["Data file containing Event2D events.", "Version 2", f"Width {width}",
                f"Height {height}", f"geometry {width}x{height}"] + ([f"T0 {t0}"] if t0 else [])
    version = encoding[-1]
    return ([f"evt {version}.0", f"format EVT{version};width={width};height={height}",
             f"geometry {width}x{height}"] + ([f"t0 {t0}"] if t0 else []) + ["end"])


def write_prophesee(path: Path, recording: Recording, encoding: str) -> None:
    """EVT 2.0 `.raw` or DAT encoded by expelliarmus, EVT 3.0 by faery, behind our `%` header
    (the geometry, which expelliarmus's own header leaves out, and `t0`).

    EVT 2.0 / DAT: expelliarmus writes 1 M events in 39 ms (EVT 2.0) and 41 ms (DAT) against
    faery's 104 and 75 ms, and the files of either read back equal through both libraries.
    EVT 3.0: faery emits every TIME_HIGH change (gaps of 2^24 µs and more bridged by TIME_HIGH
    words), so its files decode to the events written by our decoder, which follows the format;
    expelliarmus's EVT 3.0 encoder leaves out the TIME_HIGH word when the 12-bit time-low
    counter wraps (a gap of 4,096 µs or more loses 4,096 µs)."""
    ev = recording.events
    w, h = int(recording.sensor_size[0]), int(recording.sensor_size[1])
    if max(w, h) - 1 > MAX_COORD[encoding]:
        raise ValueError(f"{path}: a {w}x{h} sensor does not fit {encoding.upper()} "
                         f"(coordinates up to {MAX_COORD[encoding]})")
    # timestamps past the 32-bit range (epoch times of AEDAT 4) are written from the first
    # event's time, which the header names as t0
    t0 = int(ev["t"][0]) if len(ev) and int(ev["t"][-1]) > MAX_T else 0
    if len(ev) and int(ev["t"][-1]) - t0 > MAX_T:
        raise ValueError(f"{path}: the recording spans {int(ev['t'][-1]) - t0} µs, more than "
                         f"{encoding.upper()}'s 32-bit µs timestamps hold ({MAX_T})")
    suffix = ".dat" if encoding == "dat" else ".raw"
    with tempfile.TemporaryDirectory(prefix="spikestream-", dir=path.parent) as tmp:
        body = Path(tmp) / f"events{suffix}"  # expelliarmus insists on the suffix
        if encoding == "evt3":
            import faery

            arr = np.empty(len(ev), dtype=faery.EVENTS_DTYPE)
            arr["t"], arr["x"], arr["y"], arr["on"] = ev["t"] - t0, ev["x"], ev["y"], ev["p"] > 0
            faery.events_stream_from_array(arr, (w, h)).to_file(body, version="evt3",
                                                                 zero_t0=False)
        else:
            from expelliarmus import Wizard

            arr = np.empty(len(ev), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
            arr["t"], arr["x"], arr["y"], arr["p"] = ev["t"] - t0, ev["x"], ev["y"], ev["p"]
            Wizard(encoding=encoding).save(body, arr)
        start, _ = parse_header(body)
        with open(path, "wb") as out, open(body, "rb") as src:
            out.write("".join(f"% {ln}\n" for ln in header_lines(encoding, w, h, t0)).encode())
            src.seek(start)
            shutil.copyfileobj(src, out, 1 << 20)


for _enc, _ext, _magic in (("evt2", ".raw", "% header naming evt 2.0"),
                           ("evt3", ".raw", "% header naming evt 3.0"),
                           ("dat", ".dat", "% header, then type/size bytes")):
    register_format(Format(
        _enc, (_ext,), _magic, "own, vectorised" if _enc == "evt3" else "expelliarmus", "chunked",
        open=functools.partial(open_source, encoding=_enc),
        sniff=lambda path, head, enc=_enc: sniff_encoding(path, head) == enc,
        write=functools.partial(write_prophesee, encoding=_enc)))
