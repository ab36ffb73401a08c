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
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Captured:
    text: str = ""


@contextmanager
def captured_native_output(fds: tuple[int, ...] = (1, 2)) -> Iterator[Captured]:
    """Redirect `fds` to a temporary file for the duration; yields what was written there."""
    out = Captured()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    saved = []
    with tempfile.TemporaryFile() as sink:
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
            sink.seek(0)
            out.text = sink.read(1 << 16).decode("utf-8", "replace")


def quiet_next(it: Iterator[T]) -> T | None:
    """`next(it, None)` with the native output of that one step captured."""
    with captured_native_output():
        return next(it, None)
