"""EVT 3.0 decoding per Prophesee's format, vectorised over chunks of 16-bit words.

Our own decoder rather than expelliarmus's: expelliarmus counts a 2^24 µs wrap whenever an
EVT_TIME_LOW value goes down instead of following the EVT_TIME_HIGH words, so on files that
emit every TIME_HIGH (Metavision's, faery's) it counts each 4,096 µs step of the high bits twice
(its own test recording reads as 53.9 ms instead of 8.8 ms).

Words are little-endian u16, type in bits 15..12:
0x0 EVT_ADDR_Y (y in 10..0, system type in 11), 0x2 EVT_ADDR_X (x in 10..0, polarity in 11),
0x3 VECT_BASE_X (x base in 10..0, polarity in 11), 0x4 VECT_12 / 0x5 VECT_8 (validity masks:
bit i is an event at base + i; the base then advances by 12 / 8), 0x6 EVT_TIME_LOW (t bits
11..0), 0x8 EVT_TIME_HIGH (t bits 23..12; the 24-bit time wraps at 2^24 µs, seen as TIME_HIGH
going down), 0x7 CONTINUED_4, 0xA EXT_TRIGGER, 0xE OTHERS, 0xF CONTINUED_12 (not CD events:
skipped). Types 0x1, 0x9, 0xB, 0xC, 0xD are undefined: an error naming file and offset.
CD events before the first TIME_HIGH have no time base and are an error too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikestream.events import EventFormatError

#: CD and time word types.
ADDR_Y, ADDR_X, VECT_BASE_X, VECT_12, VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
TIME_LOW, TIME_HIGH = 0x6, 0x8
#: Word types the format defines (CD, time and the skipped kinds).
DEFINED_TYPES = (0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xA, 0xE, 0xF)
#: Period of the 24-bit time.
WRAP_US = 1 << 24

_BITS = np.arange(12, dtype=np.int64)
_DEFINED = np.zeros(16, bool)
_DEFINED[list(DEFINED_TYPES)] = True


@dataclass
class Evt3State:
    """Decoder state carried from one chunk of words to the next (-1: not seen yet)."""

    y: int = -1
    base_x: int = -1  # the x the next vector word starts at
    vect_p: int = 0
    low: int = 0
    high: int = -1
    wraps: int = 0


def _last(mask: np.ndarray, ar: np.ndarray) -> np.ndarray:
    """At each word, the index of the last word where `mask` holds (that word included), -1
    before the first."""
    idx = np.where(mask, ar, -1)
    np.maximum.accumulate(idx, out=idx)
    return idx


def _carried(idx: np.ndarray, values: np.ndarray, init: int) -> np.ndarray:
    """`values[idx]`, `init` where `idx` is -1 (the state carried from the previous chunk)."""
    out = values[idx].astype(np.int64)
    out[idx < 0] = init
    return out


def decode_words(words: np.ndarray, state: Evt3State, path: Path | str, offset: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CD events (x, y, t, p in word order, vector bits by increasing x) of one chunk of EVT 3.0
    words starting at byte `offset`; `state` is updated for the next chunk."""
    n = len(words)
    kind = (words >> 12).astype(np.uint8)
    undefined = np.flatnonzero(~_DEFINED[kind])
    if undefined.size:
        i = int(undefined[0])
        raise EventFormatError(path, f"undefined EVT 3.0 word type 0x{kind[i]:X}",
                               offset=offset + 2 * i, expected="a defined EVT 3.0 word type")
    empty = np.empty(0, np.int64)
    if not n:
        return empty, empty, empty, empty
    pay = (words & 0x0FFF).astype(np.int64)
    ar = np.arange(n, dtype=np.int64)
    # time: TIME_HIGH words going down mark a wrap of the 24-bit time
    high_rows = np.flatnonzero(kind == TIME_HIGH)
    highs = pay[high_rows]
    prev = np.concatenate(([state.high if state.high >= 0 else highs[0] if highs.size else 0],
                           highs[:-1]))
    wraps_at_high = state.wraps + np.cumsum(highs < prev)
    pay[high_rows] = wraps_at_high * WRAP_US + (highs << 12)  # the full high part of t
    init_high = state.wraps * WRAP_US + (state.high << 12) if state.high >= 0 else -1
    # vectors: the base a vector word starts at is the last VECT_BASE_X plus the widths since
    is_vect8 = kind == VECT_8
    is_vect = (kind == VECT_12) | is_vect8
    width = np.where(is_vect, np.where(is_vect8, 8, 12), 0)
    done = np.cumsum(width) - width  # widths of the vector words before each word
    is_base = kind == VECT_BASE_X
    base_idx = _last(is_base, ar)
    # events: one per ADDR_X word, one per set bit of a vector word, in word order
    is_x = kind == ADDR_X
    vect_rows = np.flatnonzero(is_vect)
    mask = pay[vect_rows] & np.where(is_vect8[vect_rows], 0xFF, 0xFFF)
    vect_bits = ((mask[:, None] >> _BITS) & 1).astype(bool)  # [vector words, 12]
    counts = is_x.astype(np.int64)
    counts[vect_rows] = vect_bits.sum(axis=1)
    rows = np.flatnonzero(counts)  # the words that carry events
    r_counts = counts[rows]
    r_base = base_idx[rows]
    r_x = is_x[rows]
    t_high = _carried(_last(kind == TIME_HIGH, ar)[rows], pay, init_high)
    t_low = _carried(_last(kind == TIME_LOW, ar)[rows], pay, state.low)
    y_idx = _last(kind == ADDR_Y, ar)
    y = _carried(y_idx[rows], pay & 0x7FF, state.y)
    start_x = np.where(r_base >= 0, (pay[r_base] & 0x7FF) - done[np.maximum(r_base, 0)],
                       state.base_x) + done[rows]
    vect_p = _carried(r_base, pay >> 11, state.vect_p)
    bad = (t_high < 0) | (y < 0) | (~r_x & (r_base < 0) & (state.base_x < 0))
    if bad.any():
        w = int(rows[np.argmax(bad)])
        j = int(np.argmax(bad))
        what = ("before the first EVT_TIME_HIGH" if t_high[j] < 0 else
                "before the first EVT_ADDR_Y" if y[j] < 0 else "before the first VECT_BASE_X")
        raise EventFormatError(path, f"a CD event {what}", offset=offset + 2 * w,
                               expected="time high, y and x base words before events")
    ev_x = np.repeat(np.where(r_x, pay[rows] & 0x7FF, start_x), r_counts)
    in_vect = np.repeat(~r_x, r_counts)
    ev_x[in_vect] += np.nonzero(vect_bits)[1]
    ev_p = np.repeat(np.where(r_x, pay[rows] >> 11, vect_p), r_counts)
    ev_y = np.repeat(y, r_counts)
    ev_t = np.repeat(t_high + t_low, r_counts)
    # state after the chunk
    last_y = int(y_idx[-1])
    state.y = int(pay[last_y] & 0x7FF) if last_y >= 0 else state.y
    last_base = int(base_idx[-1])
    if last_base >= 0:
        state.vect_p = int(pay[last_base] >> 11)
        state.base_x = int((pay[last_base] & 0x7FF) + done[-1] + width[-1] - done[last_base])
    elif state.base_x >= 0:
        state.base_x += int(done[-1] + width[-1])
    last_low = np.flatnonzero(kind == TIME_LOW)
    if last_low.size:
        state.low = int(pay[last_low[-1]])
    if highs.size:
        state.high, state.wraps = int(highs[-1]), int(wraps_at_high[-1])
    return ev_x, ev_y, ev_t, ev_p


def iter_evt3(path: Path, start: int, chunk_words: int = 1 << 20
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(x, y, t, p) of the CD events of the EVT 3.0 words from byte `start` to the end of the
    file, one chunk of `chunk_words` words at a time (memory bounded by the chunk)."""
    state = Evt3State()
    offset = start
    with open(path, "rb") as f:
        f.seek(start)
        while buf := f.read(2 * chunk_words):
            words = np.frombuffer(buf[: len(buf) // 2 * 2], "<u2")
            yield decode_words(words, state, path, offset)
            offset += len(buf)
