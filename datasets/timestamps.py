"""Plausibility of timestamp-counter repairs (wraps and overflow records).

Readers whose format repairs a hardware counter (AEDAT 2.0's int32 wrap, AEDAT 3.1's overflow
count, N-MNIST's overflow records, Prophesee's 32-bit overflow) add whole counter periods to
later events. A repair applied where the counter did not wrap (a zeroed run, a flipped bit, a
forged header) would move every later event by that much; so every step between consecutive
events must stay within the counter's reach, and a larger one is an error naming the record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikestream.events import EventFormatError

#: Largest step between consecutive events of a 32-bit µs counter: half its range (36 min).
MAX_STEP_32BIT_US = 1 << 31


def first_implausible_step(t: np.ndarray, last_t: int | None, max_step_us: int) -> int | None:
    """Index of the first event of `t` more than `max_step_us` after its predecessor (`last_t`
    before the first), or None."""
    if not len(t):
        return None
    prev = np.concatenate(([t[0] if last_t is None else last_t], t[:-1]))
    jump = np.flatnonzero(t - prev > max_step_us)
    return int(jump[0]) if jump.size else None


def check_steps(path: Path | str, t: np.ndarray, last_t: int | None, max_step_us: int, *,
                first: int, offsets: np.ndarray | None = None,
                records: np.ndarray | None = None) -> None:
    """`EventFormatError` naming the record (event `first + i`, or `records[i]`) and byte offset
    of the first step over `max_step_us`: an implausible counter repair."""
    i = first_implausible_step(t, last_t, max_step_us)
    if i is None:
        return
    prev = int(t[i - 1]) if i else int(last_t)  # type: ignore[arg-type]
    raise EventFormatError(
        path, f"timestamp jumps from {prev} to {int(t[i])} µs: an implausible "
        "timestamp-overflow repair (a zeroed or corrupt run?)",
        offset=None if offsets is None else int(offsets[i]),
        record=first + i if records is None else int(records[i]),
        expected=f"steps of at most {max_step_us} µs between events")
