"""Between capture and inference: a bounded FIFO of bins with the drop-oldest or block policy
(`BinQueue`), and step latencies in constant memory (`LatencyHistogram`)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POLICIES = ("drop_oldest", "block")


# -- latency -----------------------------------------------------------------------------------


class LatencyHistogram:
    """Percentiles of durations in constant memory: log-spaced bins from 1 µs to 1000 s."""

    def __init__(self, lo_s: float = 1e-6, hi_s: float = 1e3, bins_per_decade: int = 300) -> None:
        self._lo = math.log10(lo_s)
        self._per = bins_per_decade
        self._n = int(round((math.log10(hi_s) - self._lo) * bins_per_decade))
        self.counts = np.zeros(self._n + 2, np.int64)  # [under, bins..., over]
        self.total = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        self.total += 1
        self.sum_s += seconds
        self.max_s = max(self.max_s, seconds)
        if seconds <= 0:
            self.counts[0] += 1
            return
        i = int((math.log10(seconds) - self._lo) * self._per)
        self.counts[min(max(i + 1, 0), self._n + 1)] += 1

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (0..100) in ms, at the geometric centre of its bin."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.total))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        if i == 0:
            return 0.0
        if i > self._n:
            return self.max_s * 1e3
        return 10 ** (self._lo + (i - 0.5) / self._per) * 1e3

    @property
    def mean_ms(self) -> float | None:
        return self.sum_s / self.total * 1e3 if self.total else None


# -- the bounded queue -------------------------------------------------------------------------


@dataclass
class _Bin:
    index: int
    t_end_us: int | None
    frame: np.ndarray
    done_at: float


class BinQueue:
    """A bounded FIFO of bins between capture and inference, with the drop/block policy."""

    def __init__(self, maxsize: int, policy: str = "drop_oldest") -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = int(maxsize)
        self.policy = policy
        self._items: deque[_Bin] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stopped = False
        self.drops = 0
        self.rejected = 0  # bins offered after `stop`
        self.max_len = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: _Bin) -> bool:
        """Queue a bin; returns False once the queue is stopped."""
        with self._cond:
            if self.policy == "block":
                while len(self._items) >= self.maxsize and not self._stopped:
                    self._cond.wait()
            if self._stopped:
                self.rejected += 1
                return False
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                self.drops += 1
            self._items.append(item)
            self.max_len = max(self.max_len, len(self._items))
            self._cond.notify_all()
            return True

    def put_many(self, items: Sequence[_Bin]) -> bool:
        """Queue several bins in order (one lock round for the drop policy)."""
        if self.policy == "block" or len(items) <= 1:
            for i, item in enumerate(items):
                if not self.put(item):
                    with self._cond:
                        self.rejected += len(items) - i - 1
                    return False
            return True
        with self._cond:
            if self._stopped:
                self.rejected += len(items)
                return False
            self._items.extend(items)
            excess = len(self._items) - self.maxsize
            for _ in range(max(excess, 0)):
                self._items.popleft()
            self.drops += max(excess, 0)
            self.max_len = max(self.max_len, min(len(self._items), self.maxsize))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> _Bin | None:
        """Next bin; None when the queue is closed and empty, stopped, or on timeout."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._closed and not self._stopped:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if self._stopped or not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def count_drops(self, n: int) -> None:
        """Count `n` bins dropped before they were queued (older than a full queue's worth)."""
        with self._cond:
            self.drops += int(n)

    def close(self) -> None:
        """No more bins will come (the consumer drains what is left)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stop(self) -> int:
        """Stop both sides now; returns the number of bins left unprocessed."""
        with self._cond:
            self._stopped = True
            left = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left
