"""Capturing what native decoders write straight to file descriptors 1 and 2.

The `aedat` package prints a Rust panic message and backtrace on stderr before the panic
reaches Python, and `expelliarmus` prints warnings on stdout; both bypass `sys.stdout`/`sys.stderr`.
Around a call into them, `captured_native_output()` points fds 1 and 2 at a temporary file, so a
user sees only our one-line error; the text is kept (`.text`) for an error's detail.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TypeVar

T = TypeVar("T")


@dataclass
class Captured:
    text: str = ""


@contextmanager
def captured_native_output(fds: tuple[int, ...] = (1, 2),
                           sink: IO[bytes] | None = None) -> Iterator[Captured]:
    """Redirect `fds` to a temporary file for the duration; yields what was written there.
    `sink`: a temporary file to reuse, for a caller that captures many short calls (creating a
    file costs more than a decoder's step); each call's text is written from its start."""
    if sink is not None:
        with _redirected(fds, sink) as out:
            yield out
        return
    with tempfile.TemporaryFile() as own, _redirected(fds, own) as out:
        yield out


@contextmanager
def _redirected(fds: tuple[int, ...], sink: IO[bytes]) -> Iterator[Captured]:
    out = Captured()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    sink.seek(0)  # the text of this call is what lies before the offset afterwards
    saved = []
    try:
        for fd in fds:
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                continue  # not open in this process: nothing to capture
            os.dup2(sink.fileno(), fd)
        yield out
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        end = sink.tell()
        if end:
            sink.seek(0)
            out.text = sink.read(min(end, 1 << 16)).decode("utf-8", "replace")


def quiet_next(it: Iterator[T], sink: IO[bytes] | None = None) -> T | None:
    """`next(it, None)` with the native output of that one step captured (into `sink`, a
    temporary file to reuse, when given)."""
    with captured_native_output(sink=sink):
        return next(it, None)
