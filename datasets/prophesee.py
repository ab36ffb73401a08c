"""Prophesee EVT 2.0 / EVT 3.0 `.raw` and DAT files, decoded by our compiled decoders
(`datasets/compiled_decoders.py`; the EVT 3.0 word table and why not expelliarmus's decoder:
`datasets/evt3.py`), written through expelliarmus (EVT 2.0, DAT) and faery (EVT 3.0).

The decoders write the events' fields in one pass over each block of words and check them on
the way (word types, time base, field ranges, overflow repairs, time order, sensor bounds), so a
read costs one pass; any problem is an error naming the file and the byte offset. A process
without numba decodes a small file in numpy (`prophesee_numpy.py`, `decoder_choice.py`).
The sensor size comes from the `%` header (`% geometry WxH`, `% format ...;width=..;height=..`,
`% Width`/`% Height`, or a known plugin name); when the header names none it is inferred from the
events (metadata `sensor_size_inferred`).
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from spikestream.datasets.decoder_choice import use_compiled
from spikestream.datasets.formats import HEAD_BYTES, Format, register_format
from spikestream.datasets.textheader import parse_text_header, read_text_header
from spikestream.datasets.timestamps import MAX_STEP_32BIT_US, check_steps
from spikestream.events import (
    EVENT_DTYPE,
    MAX_TIME_US,
    EventFormatError,
    Recording,
    SensorSize,
    checked_events,
)

#: Prophesee HAL plugin-name fragments -> (width, height).
PLUGINS: dict[str, tuple[int, int]] = {
    "gen41": (1280, 720),
    "imx636": (1280, 720),
    "gen31": (640, 480),
    "gen3": (640, 480),
}

def parse_header(path: Path, f: BinaryIO | None = None) -> tuple[int, list[str]]:
    """Byte offset of the binary data and the `%` header lines (without `% `); from the open
    file (or bytes) `f` when given."""
    if f is None:
        pos, lines = read_text_header(path, b"%", end="end")
    else:
        pos, lines = parse_text_header(f, path, b"%", end="end")
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


_GEOMETRY = re.compile(r"geometry\s+(\d+)x(\d+)")
_WIDTH = re.compile(r"width[=\s]+(\d+)", re.I)
_HEIGHT = re.compile(r"height[=\s]+(\d+)", re.I)
_T0 = re.compile(r"t0\s+(\d+)", re.I)


def header_size(lines: list[str]) -> tuple[int, int] | None:
    """(width, height) named by the header, if any."""
    text = "\n".join(lines)
    m = _GEOMETRY.search(text)
    if m:
        return int(m.group(1)), int(m.group(2))
    w = _WIDTH.search(text)
    h = _HEIGHT.search(text)
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
        m = _T0.fullmatch(ln.strip())
        if m:
            return int(m.group(1))
    return 0


#: Words a block of the numpy decoders (whose temporaries take ~10 int64 a word).
NUMPY_BLOCK = 1 << 20


class DecodedPackets:
    """Packets of a Prophesee file's words from byte `body` to `size`, decoded `block_words` at a
    time. The compiled decoders (`compiled_decoders`) also check time order and the bounds
    `check_within` sets, so `EventStream` checks their packets no further; the numpy decoders
    (`prophesee_numpy`, for small reads: `decoder_choice`) leave that check to `EventStream`."""

    def __init__(self, path: Path, enc: str, body: int, size: int, block_words: int,
                 t0: int = 0, compiled: bool | None = None) -> None:
        self.path, self.enc, self.body, self.size, self.t0 = path, enc, body, size, t0
        self.unit = 2 if enc == "evt3" else 4  # bytes a word
        self.block = block_words + (block_words % 2 if enc == "dat" else 0)  # DAT: whole records
        self.bounds = (1 << 16, 1 << 16)  # the u2 fields' range until the sensor is known
        self.compiled = use_compiled(size - body) if compiled is None else compiled

    def check_within(self, width: int, height: int) -> bool:
        """Events must lie inside a `width` x `height` sensor; True when the decoder checks
        that (and time order) itself."""
        self.bounds = (int(width), int(height))
        return self.compiled

    def _blocks(self, block: int) -> Iterator[tuple[int, np.ndarray]]:
        """(byte offset, words) of each block of `block` words, read into one reused buffer."""
        buf = np.empty(min(block, (self.size - self.body) // self.unit),
                       "<u2" if self.unit == 2 else "<u4")
        pos = self.body
        with open(self.path, "rb") as f:
            f.seek(self.body)
            while pos < self.size:
                got = f.readinto(buf) // self.unit
                if got <= 0:
                    return
                yield pos, buf[:got]
                pos += got * self.unit

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        return self._compiled() if self.compiled else self._numpy()

    def _numpy(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        from spikestream.datasets import prophesee_numpy as npd

        decode = {"evt3": npd.decode_evt3, "evt2": npd.decode_evt2, "dat": npd.decode_dat}[
            self.enc]
        state = npd.new_state()
        first, last_t = 0, None
        for pos, words in self._blocks(min(self.block, NUMPY_BLOCK)):
            x, y, t, p = decode(words, state, self.path, pos)
            ev = checked_events(x, y, t, p, source=self.path, first=first, t_offset=self.t0)
            check_steps(self.path, ev["t"], last_t, MAX_STEP_32BIT_US, first=first)
            if len(ev):
                last_t = int(ev["t"][-1])
                first += len(ev)
                yield ev, None

    def _compiled(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        from spikestream.datasets import compiled_decoders as dec  # numba: when reading only
        from spikestream.datasets.prophesee_numpy import new_state

        decode = {"evt3": dec.decode_evt3, "evt2": dec.decode_evt2, "dat": dec.decode_dat}[
            self.enc]
        state = new_state()
        w, h = self.bounds
        first = 0
        for pos, words in self._blocks(self.block):
            # room for every event: counted (EVT 3.0), or one a word or record (room left
            # unwritten is never resident)
            cap = (dec.count_evt3(words) if self.enc == "evt3" else
                   len(words) // 2 if self.enc == "dat" else len(words))
            ev = np.empty(cap, EVENT_DTYPE)
            n, code, at, value = decode(words, state, ev["x"], ev["y"], ev["t"], ev["p"], w, h,
                                        self.t0, MAX_TIME_US - self.t0, MAX_STEP_32BIT_US)
            if code != dec.OK:
                self._fail(dec, code, ev, int(n), first, pos + self.unit * int(at), int(value),
                           state)
            if n:
                yield ev[:n], None
            first += n

    def _fail(self, dec: Any, code: int, ev: np.ndarray, n: int, first: int, offset: int,
              value: int, state: np.ndarray) -> None:
        """Raise the error that a decoder's problem `code` at event `n`, byte `offset` stands for
        (time order and bounds: `EventStream`'s own words)."""
        path, name = self.path, {"evt3": "EVT 3.0", "evt2": "EVT 2.0", "dat": "DAT"}[self.enc]
        from spikestream.datasets.prophesee_numpy import HAS_LAST, LAST_T

        last_t = int(state[LAST_T]) if state[HAS_LAST] else None
        if code == dec.WORD_TYPE:
            raise EventFormatError(path, f"undefined {name} word type 0x{value:X}", offset=offset,
                                   expected=f"a defined {name} word type")
        if code in (dec.NO_TIME_HIGH, dec.NO_ROW, dec.NO_BASE):
            what = {dec.NO_TIME_HIGH: "EVT_TIME_HIGH", dec.NO_ROW: "EVT_ADDR_Y",
                    dec.NO_BASE: "VECT_BASE_X"}[code]
            raise EventFormatError(path, f"a CD event before the first {what}", offset=offset,
                                   expected="time high, y and x base words before events")
        if code == dec.X_RANGE:
            raise EventFormatError(path, f"x={value}", offset=offset, record=first + n,
                                   expected="0 <= x <= 65535")
        if code == dec.T_RANGE:
            raise EventFormatError(path, f"t={value}" + (f" (+ offset {self.t0})" if self.t0
                                                         else ""),
                                   offset=offset, record=first + n,
                                   expected=f"0 <= t <= {MAX_TIME_US - self.t0}")
        if code == dec.STEP:
            check_steps(path, ev["t"][n:n + 1], last_t, MAX_STEP_32BIT_US, first=first + n,
                        offsets=np.array([offset]))
        dec.raise_order_or_bounds(ev, n, first, self.bounds, last_t, path, offset)


def open_source(
    path: Path, chunk_events: int, encoding: str | None = None
) -> tuple[SensorSize | None, DecodedPackets, dict[str, Any]]:
    """Sensor size (None if the header names none), packets, metadata of an EVT2/EVT3/DAT file."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
        try:  # parsed once per distinct head (`_head_header`), when the header ends in it
            start, cached = _head_header(head) if head.startswith(b"%") else (0, ())
        except EventFormatError:
            start, cached = len(head), ()
        if start < len(head) or size == len(head):
            lines = list(cached)
        else:  # a header longer than `head`, or cut by its end: the file's own error
            f.seek(0)
            start, lines = parse_header(path, f)
        f.seek(start)
        ts = f.read(2)  # DAT: the event type and size bytes
    enc = encoding or encoding_of(lines, path.suffix.lower())
    if enc not in ("evt2", "evt3", "dat"):
        raise EventFormatError(path, "the '%' header names no event encoding",
                               expected="'% evt 2.0', '% evt 3.0' or format='evt3'/'evt2'/'dat'")
    body = start + (2 if enc == "dat" else 0)
    if enc == "dat":
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
    if t0 > MAX_TIME_US:
        raise EventFormatError(path, f"time offset {t0} µs", expected=f"t0 <= {MAX_TIME_US}")
    meta: dict[str, Any] = {"encoding": enc, "header": lines, "t0_us": t0}
    # a block holds at most one event a word (EVT 2.0), a record (DAT, two words); EVT 3.0
    # takes 1.3-2.6 words an event (1 to 12 events a word), so `read_events` decodes a file of
    # up to its chunk's events in one block
    block = max(chunk_events, 4096) * {"evt2": 1, "dat": 2, "evt3": 4}[enc]
    return ((wh[0], wh[1], 2) if wh else None), DecodedPackets(path, enc, body, size, block,
                                                               t0), meta


@functools.lru_cache(maxsize=16)
def _head_header(head: bytes) -> tuple[int, tuple[str, ...]]:
    """`parse_header` of a file's first bytes (each Prophesee format's sniffer asks; a pure
    function of the bytes, so it is parsed once)."""
    pos, lines = parse_header(Path("<head>"), io.BytesIO(head))
    return pos, tuple(lines)


def sniff_encoding(path: Path, head: bytes) -> str | None:
    """The encoding a `%` header names ('evt2', 'evt3', 'dat'); None for a file without one.
    Parsed from `head` (the file's first bytes, no file access) when the header ends in it."""
    if not head.startswith(b"%"):
        return None
    whole = len(head) < HEAD_BYTES  # `head` is the whole file
    try:
        pos, cached = _head_header(head)
        lines = list(cached)
    except EventFormatError:
        if whole:
            parse_header(path, io.BytesIO(head))  # the error, naming the file
        pos = len(head)  # a line cut where `head` ends
    if pos >= len(head) and not whole:  # the header may go on past `head`: read the file
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
        _enc, (_ext,), _magic, "own, compiled (numba)", "chunked",
        open=functools.partial(open_source, encoding=_enc),
        sniff=lambda path, head, enc=_enc: sniff_encoding(path, head) == enc,
        write=functools.partial(write_prophesee, encoding=_enc)))
