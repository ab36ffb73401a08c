"""AEDAT 4.0 (iniVation DV) reader via the `aedat` package, which decodes packet by packet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aedat
import numpy as np

from spikestream.events import EVENT_DTYPE, EventFormatError, SensorSize


def open_source(
    path: Path, chunk_events: int
) -> tuple[SensorSize, Iterator[tuple[np.ndarray, np.ndarray | None]], dict[str, Any]]:
    """Sensor size of the first events stream, its packets (no byte offsets), metadata."""
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
