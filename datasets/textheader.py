"""The text header that AEDAT 2/3 (`#` lines) and Prophesee files (`%` lines) start with."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from spikestream.events import EventFormatError


def read_text_header(
    path: Path, marker: bytes, *, end: str | None = None, end_required: bool = False
) -> tuple[int, list[str]]:
    """Leading lines that start with `marker`: the byte offset after them, and the lines
    without the marker and the line end (latin-1).

    Stops at the first line that does not start with `marker`, or after the line whose text is
    `end` (not included). With `end_required`, a header that stops before `end` is an error.
    """
    with open(path, "rb") as f:
        return parse_text_header(f, path, marker, end=end, end_required=end_required)


def parse_text_header(
    f: BinaryIO, path: Path, marker: bytes, *, end: str | None = None,
    end_required: bool = False
) -> tuple[int, list[str]]:
    """`read_text_header` of the open file (or `io.BytesIO` of its first bytes) `f`, read from
    its position (the file's start)."""
    mark = marker.decode()
    lines: list[str] = []
    pos = 0
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


_AEDAT_VERSIONS = {b"2.": "2", b"3.1": "3.1", b"4.": "4"}


def aedat_version(path: Path, head: bytes) -> str | None:
    """'2', '3.1' or '4' for a file that starts `#!AER-DAT<version>`, None for any other file;
    an AEDAT version we do not read is an error."""
    if not head.startswith(b"#!AER-DAT"):
        return None
    version = head[9:12]
    for prefix, name in _AEDAT_VERSIONS.items():
        if version.startswith(prefix):
            return name
    raise EventFormatError(path, f"AEDAT version {version!r}", offset=9,
                           expected="AEDAT 2.0, 3.1 or 4.0")
