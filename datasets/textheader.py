"""The text header that AEDAT 2/3 (`#` lines) and Prophesee files (`%` lines) start with."""

from __future__ import annotations

from pathlib import Path

from spikestream.events import EventFormatError


def read_text_header(
    path: Path, marker: bytes, *, end: str | None = None, end_required: bool = False
) -> tuple[int, list[str]]:
    """Leading lines that start with `marker`: the byte offset after them, and the lines
    without the marker and the line end (latin-1).

    Stops at the first line that does not start with `marker`, or after the line whose text is
    `end` (not included). With `end_required`, a header that stops before `end` is an error.
    """
    mark = marker.decode()
    lines: list[str] = []
    pos = 0
    with open(path, "rb") as f:
        while True:
            if f.read(1) != marker:
                if end_required:
                    raise EventFormatError(
                        path, f"header ended without '{mark}{end}'", offset=pos,
                        expected=f"'{mark}' header lines up to '{mark}{end}'",
                    )
                return pos, lines
            line = f.readline(1 << 20)
            if not line.endswith(b"\n"):
                raise EventFormatError(path, "header line not terminated", offset=pos,
                                       expected=f"'\\n' ending a '{mark}' line")
            pos += 1 + len(line)
            text = line.decode("latin-1").rstrip("\r\n")
            if end is not None and text.strip() == end:
                return pos, lines
            lines.append(text)
