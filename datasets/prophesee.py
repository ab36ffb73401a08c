"""Prophesee EVT 2.0 / EVT 3.0 `.raw` and DAT files via `expelliarmus`.

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

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.native_output import quiet_next
from spikestream.datasets.textheader import read_text_header
from spikestream.events import EventFormatError, SensorSize, checked_events

#: Prophesee HAL plugin-name fragments -> (width, height).
PLUGINS: dict[str, tuple[int, int]] = {
    "gen41": (1280, 720),
    "imx636": (1280, 720),
    "gen31": (640, 480),
    "gen3": (640, 480),
}

#: EVT word types (top 4 bits) that expelliarmus decodes.
_EVT3_TYPES = (0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8)
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


def _first_bad_word(path: Path, start: int, encoding: str) -> int | None:
    """Byte offset of the first word whose type expelliarmus does not decode (read in chunks)."""
    if encoding == "evt3":
        dtype, shift, ok = np.dtype("<u2"), 12, _EVT3_TYPES
    else:
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


#: Largest step between consecutive events that a timestamp-overflow repair may produce: half
#: the 32-bit µs range (36 min). A larger step comes from a repair applied where the counter did
#: not wrap (a zeroed or corrupt run), and is an error rather than hours added to every event.
MAX_STEP_US = 1 << 31


def _check_steps(path: Path, t: np.ndarray, last_t: int | None, first: int) -> None:
    if not len(t):
        return
    prev = np.concatenate(([t[0] if last_t is None else last_t], t[:-1]))
    jump = np.flatnonzero(t - prev > MAX_STEP_US)
    if jump.size:
        i = int(jump[0])
        raise EventFormatError(
            path, f"timestamp jumps from {int(prev[i])} to {int(t[i])} µs: an implausible "
            "timestamp-overflow repair (a zeroed or corrupt run?)", record=first + i,
            expected=f"steps of at most {MAX_STEP_US} µs between events")


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
                                    first=first)
                _check_steps(path, ev["t"], last_t, first)
                if len(ev):
                    last_t = int(ev["t"][-1])
                first += len(ev)
                yield ev, None
            if not wizard.cargo.events_info.finished and size > body:
                at = _first_bad_word(path, body, enc) if enc != "dat" else None
                raise EventFormatError(path, f"{enc.upper()} decoding stopped early", offset=at,
                                       expected=f"valid {enc.upper()} words")

    meta: dict[str, Any] = {"encoding": enc, "header": lines}
    return ((wh[0], wh[1], 2) if wh else None), packets(), meta


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


for _enc, _ext, _magic in (("evt2", ".raw", "% header naming evt 2.0"),
                           ("evt3", ".raw", "% header naming evt 3.0"),
                           ("dat", ".dat", "% header, then type/size bytes")):
    register_format(Format(
        _enc, (_ext,), _magic, "expelliarmus", "chunked",
        open=functools.partial(open_source, encoding=_enc),
        sniff=lambda path, head, enc=_enc: sniff_encoding(path, head) == enc))
