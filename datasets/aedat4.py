"""AEDAT 4.0 (iniVation DV) reader via the `aedat` package, which decodes packet by packet.

The `aedat` package aborts the whole process (a panic across its FFI boundary) when the XML
description in the file header is not valid UTF-8, so we check the header ourselves first:
`#!AER-DAT4.0\r\n`, a little-endian u32 size, then the flatbuffer `IOHeader` table whose third
field is the description string.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import aedat
import numpy as np

from spikestream.datasets.formats import Format, register_format
from spikestream.datasets.native_output import captured_native_output, quiet_next
from spikestream.datasets.textheader import aedat_version
from spikestream.events import EVENT_DTYPE, EventFormatError, Recording, SensorSize

MAGIC = b"#!AER-DAT4.0\r\n"


def check_header(path: Path) -> str:
    """Return the header's XML description after checking every offset and its UTF-8."""
    return _io_header(path)[0]


def _io_header(path: Path) -> tuple[str, int, int]:
    """The IOHeader's description, its data table position (-1: none) and where it ends."""
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
    end = start + size

    def field_offset(k: int) -> int:  # 0 when the k-th field is absent
        at = 4 + 2 * k
        if vt_size < at + 2 or vtable + at + 2 > len(buf):
            return 0
        return struct.unpack_from("<H", buf, vtable + at)[0]

    table_pos = -1  # field 1: dataTablePosition (int64, default -1)
    if field_offset(1):
        at = table + field_offset(1)
        if not 0 <= at <= len(buf) - 8:
            raise EventFormatError(path, "IOHeader offset out of range", offset=start + at,
                                   expected="offsets inside the header")
        table_pos = struct.unpack_from("<q", buf, at)[0]
    off = field_offset(2)  # the description string
    if off == 0:
        return "", table_pos, end
    at = table + off
    string_at = at + u32(at)
    n = u32(string_at)
    raw = buf[string_at + 4:string_at + 4 + n]
    if len(raw) < n:
        raise EventFormatError(path, "description string runs past the header",
                               offset=start + string_at, expected="a string inside the header")
    try:
        return raw.decode("utf-8"), table_pos, end
    except UnicodeDecodeError as e:
        raise EventFormatError(path, f"description is not UTF-8 ({e.reason})",
                               offset=start + string_at + 4 + e.start,
                               expected="UTF-8 XML text") from e


#: Smallest packet body the decoder accepts (a flatbuffer's size prefix, root offset and file
#: identifier); a smaller one makes the `aedat` package panic.
MIN_PACKET = 12
_PACKET_HEADER = struct.Struct("<iI")  # stream id, body size


def check_packets(path: Path, start: int, stop: int, stream_ids: set[int]) -> None:
    """Walk the packet headers (8 bytes each, seeking over the bodies): every stream id declared
    in the header, every body at least `MIN_PACKET` bytes and inside the file. The `aedat`
    package would otherwise allocate what a size claims, or panic; the walk reads 8 bytes a
    packet. The packets run from `start` to `stop` (the data table, or the end of the file)."""
    end = path.stat().st_size if stop < 0 else stop
    if end > path.stat().st_size or end < start:
        raise EventFormatError(path, f"data table position {stop}", offset=start,
                               expected=f"between {start} and the file's end")
    pos, index = start, 0
    with open(path, "rb") as f:
        while pos < end:
            f.seek(pos)
            head = f.read(_PACKET_HEADER.size)
            if len(head) < _PACKET_HEADER.size:
                raise EventFormatError(path, f"truncated packet header ({len(head)} bytes)",
                                       offset=pos, record=index, expected="8 bytes")
            sid, size = _PACKET_HEADER.unpack(head)
            if sid not in stream_ids:
                raise EventFormatError(path, f"packet of stream {sid}", offset=pos, record=index,
                                       expected=f"a declared stream, {sorted(stream_ids)}")
            if not MIN_PACKET <= size <= end - pos - _PACKET_HEADER.size:
                raise EventFormatError(
                    path, f"packet body of {size} bytes, {end - pos - 8} left", offset=pos + 4,
                    record=index, expected=f"{MIN_PACKET} bytes or more, inside the file")
            pos += _PACKET_HEADER.size + size
            index += 1


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size of the first events stream, its packets (no byte offsets), metadata."""
    _, table_pos, header_end = _io_header(path)
    try:
        with captured_native_output():
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
    check_packets(path, header_end, table_pos, set(streams))

    def packets() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        with tempfile.TemporaryFile() as sink:  # one capture file for every packet
            yield from decoded(sink)

    def decoded(sink: IO[bytes]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        index = 0
        while True:
            try:
                packet = quiet_next(decoder, sink)
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


def write_aedat4(path: Path, recording: Recording) -> None:
    """One event stream of the recording's sensor size, LZ4-compressed packets, through faery.

    Chosen over dv-processing's `MonoCameraWriter` (the `inivation` extra): dv-processing's
    Python API fills an `EventStore` one event at a time, 2.66 s per million events against
    faery's 0.13 s (1 M random events at 640x480, both read back equal by our reader)."""
    import faery  # 0.2 s to import: only when a file is written

    ev = recording.events
    arr = np.empty(len(ev), dtype=faery.EVENTS_DTYPE)
    arr["t"], arr["x"], arr["y"], arr["on"] = ev["t"], ev["x"], ev["y"], ev["p"] > 0
    w, h = int(recording.sensor_size[0]), int(recording.sensor_size[1])
    faery.events_stream_from_array(arr, (w, h)).to_file(path, file_type="aedat")


register_format(Format(
    "aedat4", (".aedat4",), "#!AER-DAT4", "aedat", "packet by packet",
    open=open_source, sniff=lambda path, head: aedat_version(path, head) == "4",
    write=write_aedat4))
