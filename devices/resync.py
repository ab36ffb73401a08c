"""Resynchronising a network stream on forged or outlier sequence numbers and times (RTP-style).

A datagram whose sequence number or time is far from the stream's is refused (counted as
malformed), so one forged datagram cannot move the stream; a new base is accepted only after
`probation` consecutive datagrams agree with each other, as an RTP receiver does on a sender
restart (RFC 3550, appendix A.1). The stream's first base is no different: `Probation` holds
the first datagrams until `probation` consecutive ones agree (RFC 3550's MIN_SEQUENTIAL), so a
forged first datagram is refused like any other. Work and state are constant per datagram.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .udp_format import PacketError

#: Largest forward step of the sequence number taken as datagrams lost (RFC 3550's MAX_DROPOUT).
MAX_DROPOUT = 3000
#: Largest backward step taken as a late or duplicate datagram (RFC 3550's MAX_MISORDER).
MAX_MISORDER = 100
#: Consecutive agreeing datagrams that establish a new base.
PROBATION = 3
#: Largest forward step of stream time beyond the wall-clock time that passed (10 s).
MAX_TIME_JUMP_US = 10_000_000

_SEQ_MOD = 1 << 32


class SequenceTracker:
    """Counts datagrams lost from gaps in 32-bit sequence numbers; refuses outliers."""

    def __init__(self, *, max_dropout: int = MAX_DROPOUT, max_misorder: int = MAX_MISORDER,
                 probation: int = PROBATION) -> None:
        self.max_dropout, self.max_misorder, self.probation = max_dropout, max_misorder, probation
        self.resyncs = 0
        self._expected: int | None = None
        self._candidate: int | None = None  # the next sequence number of a would-be new base
        self._agreeing = 0

    def reset(self) -> None:
        self._expected, self._candidate, self._agreeing = None, None, 0

    def arrived(self, seq: int) -> int:
        """Datagrams lost just before `seq` (to add to the drops); `PacketError` if it is refused
        (`stale_sequence`: late or duplicate; `sequence_jump`: far from the stream)."""
        seq &= _SEQ_MOD - 1
        if self._expected is None:
            self._expected = (seq + 1) % _SEQ_MOD
            return 0
        gap = (seq - self._expected) % _SEQ_MOD
        if gap <= self.max_dropout:
            self._expected = (seq + 1) % _SEQ_MOD
            self._candidate, self._agreeing = None, 0
            return gap
        if gap >= _SEQ_MOD - self.max_misorder:
            raise PacketError("stale_sequence", f"sequence {seq} is older than expected")
        if seq == self._candidate:
            self._agreeing += 1
        else:
            self._agreeing = 1
        self._candidate = (seq + 1) % _SEQ_MOD
        if self._agreeing >= self.probation:  # the sender restarted: a new base, no loss counted
            self._expected, self._candidate, self._agreeing = self._candidate, None, 0
            self.resyncs += 1
            return 0
        raise PacketError("sequence_jump",
                          f"sequence {seq} is {gap} past the expected {self._expected}")


class TimeTracker:
    """Keeps delivered time non-decreasing and its steps plausible; refuses outliers.

    A datagram may start at most `max_jump_us` plus twice the wall-clock time since the last
    accepted one after the stream's last event (a sender's pause is a plausible jump), and not
    before it. A datagram outside that is refused (`time_order` or `time_jump`) unless
    `probation` consecutive datagrams agree on a new time base: then their times are moved by
    one offset so that the stream continues from its last event, ordered and without a gap.
    """

    def __init__(self, *, max_jump_us: int = MAX_TIME_JUMP_US, probation: int = PROBATION) -> None:
        self.max_jump_us, self.probation = int(max_jump_us), probation
        self.resyncs = 0
        self.offset = 0  # µs added to incoming times since the last resync
        self._last: int | None = None  # last delivered time (after the offset)
        self._wall = 0.0
        self._candidate: int | None = None  # last raw time of a would-be new base
        self._agreeing = 0

    def reset(self) -> None:
        self.offset, self._last, self._candidate, self._agreeing = 0, None, None, 0

    def trust_next(self) -> None:
        """The next datagram may set a new base at once (its sender was seen to restart, e.g.
        its sequence numbers just resynchronised)."""
        self._agreeing = self.probation - 1
        self._candidate = None

    def _plausible_after(self, last: int, t: int, since_s: float) -> bool:
        return last <= t <= last + self.max_jump_us + int(2e6 * since_s)

    def accept(self, first: int, last: int) -> int:
        """The offset to add to a datagram whose raw times span `first..last`, or `PacketError`."""
        now = time.perf_counter()
        if self._last is None:
            self._last, self._wall = last + self.offset, now
            return self.offset
        if self._plausible_after(self._last, first + self.offset, now - self._wall):
            self._last, self._wall = last + self.offset, now
            self._candidate, self._agreeing = None, 0
            return self.offset
        chained = self._candidate is None or self._plausible_after(
            self._candidate, first, now - self._wall)
        self._agreeing = self._agreeing + 1 if chained else 1
        self._candidate = last
        if self._agreeing >= self.probation:
            self.offset = self._last - first
            self._last, self._wall = last + self.offset, now
            self._candidate, self._agreeing = None, 0
            self.resyncs += 1
            return self.offset
        start = first + self.offset
        if start < self._last:
            raise PacketError("time_order", f"datagram starts at {start} µs, before {self._last}")
        raise PacketError("time_jump", f"datagram starts at {start} µs, "
                          f"{start - self._last} µs after the stream's last event")


@dataclass
class Held:
    """A datagram on probation: its sequence number (None: the format has none), its events
    (times as received) and what the receiver needs to take it later (`extra`)."""

    seq: int | None
    events: np.ndarray
    extra: object = None
    arrived: float = field(default_factory=time.perf_counter)


class Probation:
    """Holds a stream's first datagrams until `probation` consecutive ones agree.

    Two datagrams agree when the later one's sequence number is at most `max_dropout` past the
    earlier one's and its first time is plausible after the earlier one's last (not before it,
    at most `max_jump_us` plus twice the wall-clock time between them later). Datagrams are
    kept in at most two chains of agreeing datagrams (the first one's and a challenger, which a
    newcomer agreeing with neither replaces); the first chain to reach `probation` datagrams is
    released and gives the stream its base, and the other is refused. So a forged datagram at
    the start is refused like any later one, and costs at most the `probation - 1` genuine
    datagrams of a challenger it displaced. `release` ends probation when the stream ends first:
    the longest chain (the earlier on a tie) is delivered. At most `2 * probation` datagrams are
    held; the sequence numbers of refused datagrams are kept (`seen`) so that they count as
    arrived, not lost, once the base is set.
    """

    def __init__(self, *, probation: int = PROBATION, max_dropout: int = MAX_DROPOUT,
                 max_jump_us: int = MAX_TIME_JUMP_US) -> None:
        self.probation, self.max_dropout, self.max_jump_us = probation, max_dropout, max_jump_us
        self.chains: list[tuple[str, list[Held]]] = []  # (why it is not the first, datagrams)
        self.seen: list[int] = []
        self.confirmed = False

    def reset(self) -> None:
        self.chains, self.seen, self.confirmed = [], [], False

    @property
    def held(self) -> list[Held]:
        """The first chain (the one a newcomer is checked against first)."""
        return self.chains[0][1] if self.chains else []

    def disagrees(self, chain: list[Held], b: Held) -> str | None:
        """Why `b` cannot follow `chain` (a refusal reason), or None."""
        a = chain[-1]
        if a.seq is not None and b.seq is not None:
            if (b.seq - a.seq - 1) % _SEQ_MOD > self.max_dropout:
                return "sequence_jump"
        timed = [h for h in chain if len(h.events)]
        if len(b.events) and timed:
            last, first = int(timed[-1].events["t"][-1]), int(b.events["t"][0])
            if first < last:
                return "time_order"
            if first > last + self.max_jump_us + int(2e6 * (b.arrived - timed[-1].arrived)):
                return "time_jump"
        return None

    def offer(self, d: Held) -> tuple[list[Held], list[tuple[str, Held]]]:
        """`(released, refused)` after datagram `d` arrived."""
        refused: list[tuple[str, Held]] = []
        reasons = []
        for _, chain in self.chains:
            why = self.disagrees(chain, d)
            if why is None:
                chain.append(d)
                if len(chain) >= self.probation:
                    return self._release(chain, refused)
                return [], refused
            reasons.append(why)
        if len(self.chains) == 2:  # the challenger gives way to the newcomer
            why, old = self.chains.pop()
            refused += [(why, h) for h in old]
            self._remember(old)
        self.chains.append((reasons[0] if reasons else "", [d]))
        if self.probation <= 1:
            return self._release(self.chains[-1][1], refused)
        return [], refused

    def note_arrived(self, seq: int) -> None:
        """A datagram with sequence number `seq` arrived but was refused for its content."""
        self.seen = (self.seen + [seq])[-4 * self.probation:]

    def _remember(self, held: list[Held]) -> None:
        self.seen = (self.seen + [h.seq for h in held if h.seq is not None])[-4 * self.probation:]

    def _release(self, chain: list[Held], refused: list[tuple[str, Held]]
                 ) -> tuple[list[Held], list[tuple[str, Held]]]:
        winner = next(why for why, c in self.chains if c is chain)
        for why, other in self.chains:
            if other is not chain:  # the first chain has no reason of its own: the winner's
                refused += [(why or winner or "time_order", h) for h in other]
                self._remember(other)
        self.chains, self.confirmed = [], True
        return chain, refused

    def release(self) -> tuple[list[Held], list[tuple[str, Held]]]:
        """The stream ended on probation: `(the longest chain, the others refused)`."""
        if not self.chains:
            self.confirmed = True
            return [], []
        best = max((chain for _, chain in self.chains), key=len)
        return self._release(best, [])
