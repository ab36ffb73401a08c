"""Prophesee EVT 2.0, EVT 3.0 and DAT words decoded in numpy, vectorised over a block of words:
the path of a process that has not loaded numba, for a file small enough that numba's start-up
(about 1 s: its import and the scipy import it pulls in) would cost more than it saves.

The same words give the same events and errors as the compiled decoders
(`compiled_decoders`, whose docstrings hold the word tables); the state carried from block to
block is the same int64 array (`compiled_decoders` slots, `new_state`). Range checks, timestamp
steps, time order and sensor bounds are checked by the caller (`checked_events`,
`check_steps`, `validate_events`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikestream.datasets.evt3 import (
    ADDR_X,
    ADDR_Y,
    DEFINED_TYPES,
    TIME_HIGH,
    TIME_LOW,
    VECT_8,
    VECT_12,
    VECT_BASE_X,
    WRAP_US,
)
from spikestream.events import EventFormatError

#: Slots of the state array (shared with `compiled_decoders`): EVT 3.0 row, x base, vector
#: polarity, time low, time high (-1: not seen), 24-bit wraps; DAT 32-bit overflows and last raw
#: time (EVT 2.0 keeps its time high in HIGH); the compiled decoders' last event time and
#: whether there was one (they check time order and steps across blocks).
Y, BASE_X, VECT_P, LOW, HIGH, WRAPS, OVERFLOWS, RAW_T, LAST_T, HAS_LAST = range(10)

Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_BITS = np.arange(12, dtype=np.int64)
_DEFINED_EVT3 = np.zeros(16, bool)
_DEFINED_EVT3[list(DEFINED_TYPES)] = True
_DEFINED_EVT2 = np.zeros(16, bool)
_DEFINED_EVT2[[0x0, 0x1, 0x8, 0xA, 0xE, 0xF]] = True


def new_state() -> np.ndarray:
    """The state before the first word of a file."""
    state = np.zeros(10, np.int64)
    state[[Y, BASE_X, HIGH]] = -1
    return state


def _last(mask: np.ndarray, ar: np.ndarray) -> np.ndarray:
    """At each word, the index of the last word where `mask` holds (that word included), -1
    before the first."""
    idx = np.where(mask, ar, -1)
    np.maximum.accumulate(idx, out=idx)
    return idx


def _carried(idx: np.ndarray, values: np.ndarray, init: int) -> np.ndarray:
    """`values[idx]`, `init` where `idx` is -1 (the state carried from the previous block)."""
    out = values[idx].astype(np.int64)
    out[idx < 0] = init
    return out


def _undefined(kind: np.ndarray, defined: np.ndarray, name: str, path: Path | str, offset: int,
               unit: int) -> None:
    bad = np.flatnonzero(~defined[kind])
    if bad.size:
        i = int(bad[0])
        raise EventFormatError(path, f"undefined {name} word type 0x{kind[i]:X}",
                               offset=offset + unit * i, expected=f"a defined {name} word type")


def decode_evt3(words: np.ndarray, state: np.ndarray, path: Path | str, offset: int) -> Columns:
    """CD events (x, y, t, p in word order, vector bits by increasing x) of a block of EVT 3.0
    words starting at byte `offset`; `state` is updated for the next block."""
    n = len(words)
    kind = (words >> 12).astype(np.uint8)
    _undefined(kind, _DEFINED_EVT3, "EVT 3.0", path, offset, 2)
    empty = np.empty(0, np.int64)
    if not n:
        return empty, empty, empty, empty
    s_y, s_base, s_vp, s_low, s_high, s_wraps = (int(v) for v in state[:6])
    pay = (words & 0x0FFF).astype(np.int64)
    ar = np.arange(n, dtype=np.int64)
    # time: TIME_HIGH words going down mark a wrap of the 24-bit time
    high_rows = np.flatnonzero(kind == TIME_HIGH)
    highs = pay[high_rows]
    prev = np.concatenate(([s_high if s_high >= 0 else highs[0] if highs.size else 0],
                           highs[:-1]))
    wraps_at_high = s_wraps + np.cumsum(highs < prev)
    pay[high_rows] = wraps_at_high * WRAP_US + (highs << 12)  # the full high part of t
    init_high = s_wraps * WRAP_US + (s_high << 12) if s_high >= 0 else -1
    # vectors: the base a vector word starts at is the last VECT_BASE_X plus the widths since
    is_vect8 = kind == VECT_8
    is_vect = (kind == VECT_12) | is_vect8
    width = np.where(is_vect, np.where(is_vect8, 8, 12), 0)
    done = np.cumsum(width) - width  # widths of the vector words before each word
    base_idx = _last(kind == VECT_BASE_X, ar)
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
    t_low = _carried(_last(kind == TIME_LOW, ar)[rows], pay, s_low)
    y_idx = _last(kind == ADDR_Y, ar)
    y = _carried(y_idx[rows], pay & 0x7FF, s_y)
    start_x = np.where(r_base >= 0, (pay[r_base] & 0x7FF) - done[np.maximum(r_base, 0)],
                       s_base) + done[rows]
    vect_p = _carried(r_base, pay >> 11, s_vp)
    bad = (t_high < 0) | (y < 0) | (~r_x & (r_base < 0) & (s_base < 0))
    if bad.any():
        j = int(np.argmax(bad))
        what = ("EVT_TIME_HIGH" if t_high[j] < 0 else "EVT_ADDR_Y" if y[j] < 0 else
                "VECT_BASE_X")
        raise EventFormatError(path, f"a CD event before the first {what}",
                               offset=offset + 2 * int(rows[j]),
                               expected="time high, y and x base words before events")
    ev_x = np.repeat(np.where(r_x, pay[rows] & 0x7FF, start_x), r_counts)
    ev_x[np.repeat(~r_x, r_counts)] += np.nonzero(vect_bits)[1]
    ev_p = np.repeat(np.where(r_x, pay[rows] >> 11, vect_p), r_counts)
    ev_y = np.repeat(y, r_counts)
    ev_t = np.repeat(t_high + t_low, r_counts)
    # state after the block
    if y_idx[-1] >= 0:
        state[Y] = pay[y_idx[-1]] & 0x7FF
    last_base = int(base_idx[-1])
    if last_base >= 0:
        state[VECT_P] = pay[last_base] >> 11
        state[BASE_X] = (pay[last_base] & 0x7FF) + done[-1] + width[-1] - done[last_base]
    elif s_base >= 0:
        state[BASE_X] = s_base + done[-1] + width[-1]
    last_low = np.flatnonzero(kind == TIME_LOW)
    if last_low.size:
        state[LOW] = pay[last_low[-1]]
    if highs.size:
        state[HIGH], state[WRAPS] = highs[-1], wraps_at_high[-1]
    return ev_x, ev_y, ev_t, ev_p


def decode_evt2(words: np.ndarray, state: np.ndarray, path: Path | str, offset: int) -> Columns:
    """CD events of a block of EVT 2.0 words starting at byte `offset` (as
    `compiled_decoders.decode_evt2`); `state` is updated for the next block."""
    kind = (words >> 28).astype(np.uint8)
    _undefined(kind, _DEFINED_EVT2, "EVT 2.0", path, offset, 4)
    w = words.astype(np.int64)
    is_high = kind == 0x8
    high_idx = _last(is_high, np.arange(len(w), dtype=np.int64))
    rows = np.flatnonzero(kind <= 1)
    high = _carried(high_idx[rows], w & 0xFFFFFFF, max(int(state[HIGH]), 0))
    if is_high.any():
        state[HIGH] = w[high_idx[-1]] & 0xFFFFFFF
    cd = w[rows]
    return (cd >> 11) & 0x7FF, cd & 0x7FF, (high << 6) + ((cd >> 22) & 0x3F), kind[rows]


def decode_dat(words: np.ndarray, state: np.ndarray, path: Path | str, offset: int) -> Columns:
    """Events of a block of DAT records (u32 pairs) starting at byte `offset` (as
    `compiled_decoders.decode_dat`: a t below the previous record's is a 32-bit wrap)."""
    raw = words[0::2].astype(np.int64)
    data = words[1::2].astype(np.int64)
    if not len(raw):
        return raw, raw, raw, raw
    prev = np.concatenate(([state[RAW_T]], raw[:-1]))
    overflows = state[OVERFLOWS] + np.cumsum(raw < prev)
    state[OVERFLOWS], state[RAW_T] = overflows[-1], raw[-1]
    return data & 0x3FFF, (data >> 14) & 0x3FFF, (overflows << 32) + raw, (data >> 28) != 0
