"""Compiled (numba) decoders of Prophesee EVT 2.0, EVT 3.0 and DAT words into event fields, and
the copy of AEDAT 4 packets' columns (decoded by the `aedat` package) into them.

Each decoder is one pass over a block of words that writes the events straight into the fields
of an `EVENT_DTYPE` array and checks, on the way, what the event contract and the formats
demand: word types the format defines, a time base (and for EVT 3.0 a row and an x base)
before an event, values inside their fields' range, no implausible step of a repaired
timestamp (`timestamps.MAX_STEP_32BIT_US`), time order and the sensor's bounds. It stops at the
first problem and returns its code, the word and the offending value; `prophesee.py` turns that
into an `EventFormatError` naming the file and the byte offset.

Decoding state carried from one block to the next lives in an int64 array
(`prophesee_numpy.new_state`, whose numpy decoders give the same events). This module imports
numba: `prophesee.py` imports it when a file is read, not when formats are listed.
"""

from __future__ import annotations

import numba
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
from spikestream.datasets.prophesee_numpy import (
    BASE_X,
    HAS_LAST,
    HIGH,
    LAST_T,
    LOW,
    OVERFLOWS,
    RAW_T,
    VECT_P,
    WRAPS,
    Y,
)
from spikestream.events import MAX_TIME_US, validate_events

#: Problem codes the decoders return (OK: none).
OK, WORD_TYPE, NO_TIME_HIGH, NO_ROW, NO_BASE, X_RANGE, T_RANGE, STEP, BACK, OUTSIDE = range(10)
#: No step limit (a format without timestamp repairs).
MAX_STEP_NONE = MAX_TIME_US


_DEFINED_EVT3 = np.zeros(16, np.bool_)
_DEFINED_EVT3[list(DEFINED_TYPES)] = True


def _events_per_word() -> np.ndarray:
    """CD events of every EVT 3.0 word: 1 for EVT_ADDR_X, the set bits of a vector's mask."""
    words = np.arange(1 << 16)
    kind, v = words >> 12, words & 0xFFF
    bits = np.array([bin(i).count("1") for i in range(1 << 12)], np.uint8)
    return np.where(kind == ADDR_X, 1, np.where(kind == VECT_12, bits[v], np.where(
        kind == VECT_8, bits[v & 0xFF], 0))).astype(np.uint8)


#: A table rather than branches: the word types of a real stream follow no pattern a branch
#: predictor learns.
_EVENTS_PER_WORD = _events_per_word()


@numba.njit(cache=True, nogil=True)
def _check(x, y, t_raw, t, last, has_last, w, h, t_limit, max_step):
    """The problem code of an event (x, y, decoded time `t_raw`, stored as `t`) after an event
    at `last` (if `has_last`), or OK. (The decoders keep `last` in a local, not in the state
    array: a store there each event, which numba cannot tell from the output's, ran 5x slower.)"""
    if x > 0xFFFF:
        return X_RANGE
    if t_raw > t_limit:  # before the offset is added, so that the sum never wraps
        return T_RANGE
    if has_last:
        if t - last > max_step:
            return STEP
        if t < last:
            return BACK
    if x >= w or y >= h:
        return OUTSIDE
    return OK


@numba.njit(cache=True, nogil=True)
def count_evt3(words):
    """Events the EVT 3.0 `words` hold: one per EVT_ADDR_X, one per set bit of a vector mask."""
    n = 0
    for i in range(words.shape[0]):
        n += _EVENTS_PER_WORD[words[i]]
    return n


@numba.njit(cache=True, nogil=True)
def decode_evt3(words, state, ox, oy, ot, op, w, h, t_offset, t_limit, max_step):
    """Decode EVT 3.0 `words` into the fields `ox, oy, ot, op` (sized by `count_evt3`).

    Returns (events written, problem code, word index, value): the event a problem is about
    is written at the returned count; `value` is its x (its decoded time for T_RANGE, the word
    type for WORD_TYPE)."""
    y, base, vp = state[Y], state[BASE_X], state[VECT_P]
    low, high, wraps = state[LOW], state[HIGH], state[WRAPS]
    last, has_last = state[LAST_T], state[HAS_LAST]
    # the time of the next event, kept up to date by the time words (-1: no TIME_HIGH yet)
    t_raw = wraps * WRAP_US + (high << 12) + low if high >= 0 else np.int64(-1)
    n = 0
    # word types by frequency; EVT_ADDR_X, the most common event word, has a loop of its own
    # rather than the vectors' bit loop
    for i in range(words.shape[0]):
        word = np.int64(words[i])
        kind = word >> 12
        v = word & 0xFFF
        if kind == ADDR_X:
            if t_raw < 0 or y < 0:
                state[LAST_T], state[HAS_LAST] = last, has_last
                return n, NO_TIME_HIGH if t_raw < 0 else NO_ROW, i, 0
            x = v & 0x7FF
            t = t_raw + t_offset
            ox[n], oy[n], ot[n], op[n] = x, y, t, v >> 11
            code = _check(x, y, t_raw, t, last, has_last, w, h, t_limit, max_step)
            if code != OK:
                state[LAST_T], state[HAS_LAST] = last, has_last
                return n, code, i, t_raw if code == T_RANGE else x
            last, has_last = t, 1
            n += 1
        elif kind == ADDR_Y:
            y = v & 0x7FF
        elif kind == TIME_LOW:
            low = v
            if high >= 0:
                t_raw = wraps * WRAP_US + (high << 12) + low
        elif kind == VECT_12 or kind == VECT_8:
            mask = v if kind == VECT_12 else v & 0xFF
            if mask:
                if t_raw < 0 or y < 0 or base < 0:
                    state[LAST_T], state[HAS_LAST] = last, has_last
                    return n, (NO_TIME_HIGH if t_raw < 0 else NO_ROW if y < 0 else NO_BASE), i, 0
                t = t_raw + t_offset
                x = base
                while mask:
                    if mask & 1:
                        ox[n], oy[n], ot[n], op[n] = x, y, t, vp
                        code = _check(x, y, t_raw, t, last, has_last, w, h, t_limit, max_step)
                        if code != OK:
                            state[LAST_T], state[HAS_LAST] = last, has_last
                            return n, code, i, t_raw if code == T_RANGE else x
                        last, has_last = t, 1
                        n += 1
                    mask >>= 1
                    x += 1
            if base >= 0:
                base += 12 if kind == VECT_12 else 8
        elif kind == TIME_HIGH:
            if high >= 0 and v < high:
                wraps += 1
            high = v
            t_raw = wraps * WRAP_US + (high << 12) + low
        elif kind == VECT_BASE_X:
            base, vp = v & 0x7FF, v >> 11
        elif not _DEFINED_EVT3[kind]:
            state[LAST_T], state[HAS_LAST] = last, has_last
            return n, WORD_TYPE, i, kind
    state[Y], state[BASE_X], state[VECT_P] = y, base, vp
    state[LOW], state[HIGH], state[WRAPS] = low, high, wraps
    state[LAST_T], state[HAS_LAST] = last, has_last
    return n, OK, -1, 0


@numba.njit(cache=True, nogil=True)
def decode_evt2(words, state, ox, oy, ot, op, w, h, t_offset, t_limit, max_step):
    """Decode EVT 2.0 `words` into `ox, oy, ot, op` (room for one event per word).

    CD_OFF (0x0) / CD_ON (0x1): t bits 5..0 in 27..22, x in 21..11, y in 10..0; TIME_HIGH (0x8):
    t bits 33..6 in 27..0 (0 before the first, as Prophesee's and expelliarmus' decoders);
    EXT_TRIGGER (0xA), OTHERS (0xE), CONTINUED (0xF): skipped; other types are undefined.
    Returns (events written, problem code, word index, value) as `decode_evt3`."""
    high = state[HIGH] if state[HIGH] >= 0 else 0
    last, has_last = state[LAST_T], state[HAS_LAST]
    n = 0
    for i in range(words.shape[0]):
        word = np.int64(words[i])
        kind = word >> 28
        if kind <= 1:
            x, y = (word >> 11) & 0x7FF, word & 0x7FF
            t_raw = (high << 6) + ((word >> 22) & 0x3F)
            t = t_raw + t_offset
            ox[n], oy[n], ot[n], op[n] = x, y, t, kind
            code = _check(x, y, t_raw, t, last, has_last, w, h, t_limit, max_step)
            if code != OK:
                state[HIGH], state[LAST_T], state[HAS_LAST] = high, last, has_last
                return n, code, i, t_raw if code == T_RANGE else x
            last, has_last = t, 1
            n += 1
        elif kind == 0x8:
            high = word & 0xFFFFFFF
        elif kind != 0xA and kind != 0xE and kind != 0xF:
            state[HIGH], state[LAST_T], state[HAS_LAST] = high, last, has_last
            return n, WORD_TYPE, i, kind
    state[HIGH], state[LAST_T], state[HAS_LAST] = high, last, has_last
    return n, OK, -1, 0


@numba.njit(cache=True, nogil=True)
def decode_dat(words, state, ox, oy, ot, op, w, h, t_offset, t_limit, max_step):
    """Decode DAT records (pairs of u32 `words`: t, then x in bits 13..0, y in 27..14,
    polarity in 31..28, nonzero = ON) into `ox, oy, ot, op`. A t below the previous record's
    is a wrap of the 32-bit µs counter (+2^32, as Prophesee's and expelliarmus' decoders).
    Returns (events written, problem code, word index, value) as `decode_evt3`."""
    overflows, raw_prev = state[OVERFLOWS], state[RAW_T]
    last, has_last = state[LAST_T], state[HAS_LAST]
    n = 0
    for i in range(words.shape[0] // 2):
        raw = np.int64(words[2 * i])
        data = np.int64(words[2 * i + 1])
        if raw < raw_prev:
            overflows += 1
        raw_prev = raw
        x, y = data & 0x3FFF, (data >> 14) & 0x3FFF
        t_raw = (overflows << 32) + raw
        t = t_raw + t_offset
        ox[n], oy[n], ot[n], op[n] = x, y, t, (data >> 28) != 0
        code = _check(x, y, t_raw, t, last, has_last, w, h, t_limit, max_step)
        if code != OK:
            state[OVERFLOWS], state[RAW_T] = overflows, raw_prev
            state[LAST_T], state[HAS_LAST] = last, has_last
            return n, code, 2 * i, t_raw if code == T_RANGE else x
        last, has_last = t, 1
        n += 1
    state[OVERFLOWS], state[RAW_T] = overflows, raw_prev
    state[LAST_T], state[HAS_LAST] = last, has_last
    return n, OK, -1, 0


@numba.njit(cache=True, nogil=True)
def copy_columns(t, x, y, on, state, ox, oy, ot, op, w, h, t_limit):
    """Copy decoded columns (`t` u8, `x`, `y` u2, `on` u1) into `ox, oy, ot, op`, checking
    each event as the decoders do (t within `t_limit`, time order, sensor bounds).
    Returns (problem code, event index); the state keeps the last time across calls."""
    last, has_last = state[LAST_T], state[HAS_LAST]
    for i in range(t.shape[0]):
        ti = t[i]
        if ti > t_limit:  # both unsigned: no conversion that could wrap
            return T_RANGE, i
        tt = np.int64(ti)
        xi, yi = np.int64(x[i]), np.int64(y[i])
        ox[i], oy[i], ot[i], op[i] = xi, yi, tt, on[i]
        code = _check(xi, yi, tt, tt, last, has_last, w, h, MAX_TIME_US, MAX_STEP_NONE)
        if code != OK:
            state[LAST_T], state[HAS_LAST] = last, has_last
            return code, i
        last, has_last = tt, 1
    state[LAST_T], state[HAS_LAST] = last, has_last
    return OK, -1


def raise_order_or_bounds(ev: np.ndarray, n: int, first: int, bounds: tuple[int, int],
                          last_t: int | None, source: object, offset: int | None = None) -> None:
    """Raise the error of event `n` of `ev`, which goes back in time or lies outside the sensor
    (a decoder's BACK or OUTSIDE): the event contract's own check names it."""
    lo = n - 1 if n else n
    validate_events(ev[lo:n + 1], bounds, source=source, first=first + lo,
                    offsets=None if offset is None else np.array([offset, offset]),
                    last_t=None if n else last_t)
    raise AssertionError("the decoder reported a problem the event check does not see")
