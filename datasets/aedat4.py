"""AEDAT 4.0 (iniVation DV) reader via the `aedat` package, which decodes packet by packet.

The `aedat` package aborts the whole process (a panic across its FFI boundary) when the XML
description in the file header is not valid UTF-8, so we check the header ourselves first:
`#!AER-DAT4.0\r\n`, a little-endian u32 size, then the flatbuffer `IOHeader` table whose third
field is the description string.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aedat
import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.textheader import aedat_version
from spikestream.events import EVENT_DTYPE, EventFormatError, SensorSize

MAGIC = b"#!AER-DAT4.0\r\n"


def check_header(path: Path) -> str:
    """Return the header's XML description after checking every offset and its UTF-8."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
            raise EventFormatError(path, "no AEDAT 4.0 magic and header size", offset=0,
                                   expected="'#!AER-DAT4.0\\r\\n' and a u32 size")
        (size,) = struct.unpack_from("<I", head, len(MAGIC))
        start = len(head)
        buf = f.read(size)
    if len(buf) < size:
        raise EventFormatError(path, f"header claims {size} bytes, {len(buf)} present",
                               offset=start, expected="a whole IOHeader")

    def u32(at: int) -> int:
        if not 0 <= at <= len(buf) - 4:
            raise EventFormatError(path, "IOHeader offset out of range", offset=start + max(at, 0),
                                   expected="offsets inside the header")
        return struct.unpack_from("<I", buf, at)[0]

    table = u32(0)
    vtable = table - struct.unpack("<i", struct.pack("<I", u32(table)))[0]
    if not 0 <= vtable <= len(buf) - 4:
        raise EventFormatError(path, "IOHeader vtable out of range", offset=start + table,
                               expected="a flatbuffer table")
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    field = 4 + 2 * 2  # the third field: the description string
    if vt_size < field + 2 or vtable + field + 2 > len(buf):
        return ""
    off = struct.unpack_from("<H", buf, vtable + field)[0]
    if off == 0:
        return ""
    at = table + off
    string_at = at + u32(at)
    n = u32(string_at)
    raw = buf[string_at + 4:string_at + 4 + n]
    if len(raw) < n:
        raise EventFormatError(path, "description string runs past the header",
                               offset=start + string_at, expected="a string inside the header")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EventFormatError(path, f"description is not UTF-8 ({e.reason})",
                               offset=start + string_at + 4 + e.start,
                               expected="UTF-8 XML text") from e


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size of the first events stream, its packets (no byte offsets), metadata."""
    check_header(path)
    try:
        decoder = aedat.Decoder(str(path))
        streams = decoder.id_to_stream()
    except RuntimeError as e:
        raise EventFormatError(path, f"AEDAT 4 header: {e}", offset=0,
                               expected="an AEDAT 4.0 file header") from e
    ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
    if not ids:
        raise EventFormatError(path, f"no events stream among {streams}",
                               expected="a stream of type 'events'")
    sid = ids[0]
    w, h = int(streams[sid]["width"]), int(streams[sid]["height"])

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        index = 0
        while True:
            try:
                packet = next(decoder, None)
            except RuntimeError as e:
                raise EventFormatError(path, f"AEDAT 4 packet: {e}", record=index,
                                       expected="a whole LZ4/flatbuffer packet") from e
            if packet is None:
                return
            index += 1
            if packet.get("stream_id") != sid or "events" not in packet:
                continue
            src = packet["events"]
            ev = np.empty(len(src), dtype=EVENT_DTYPE)
            ev["x"] = src["x"]
            ev["y"] = src["y"]
            t = src["t"]
            if len(t) and int(t.max()) >= 2**63:
                raise EventFormatError(path, "timestamp beyond int64", record=index - 1,
                                       expected="µs timestamps < 2^63")
            ev["t"] = t
            ev["p"] = src["on"]
            yield ev, None

    meta: dict[str, Any] = {"stream_id": sid, "streams": {k: v["type"] for k, v in streams.items()}}
    return (w, h, 2), packets(), meta


register_format(Format(
    "aedat4", (".aedat4",), "#!AER-DAT4", "aedat", "packet by packet",
    open=open_source, sniff=lambda path, head: aedat_version(path, head) == "4"))
