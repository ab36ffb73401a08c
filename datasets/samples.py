"""What the event datasets share: `(events, label)` indexing, sample identities for the frame
cache, and the seeded stratified split."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def file_key(path: Path) -> str:
    """A sample identity for caches: resolved path, size and modification time in ns."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def stratified_split(
    targets: Sequence[int], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded split of indices into (train, test), `test_fraction` of every class in test.

    Each class with at least two samples puts at least one in each part; the result depends
    only on `targets`, `test_fraction` and `seed`. Both lists come back in ascending order.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction {test_fraction} (expected 0 <= f < 1)")
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    train: list[int] = []
    test: list[int] = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return sorted(train), sorted(test)


class LabelledEvents(ABC):
    """Base of the event datasets: `ds[i] -> (transform(events), label)`.

    Subclasses set `targets` and `transform` and define `load(index)` (the untransformed events).
    """

    targets: list[int]
    transform: Callable[[np.ndarray], Any] | None

    @abstractmethod
    def load(self, index: int) -> np.ndarray:
        """The events of sample `index`, untransformed."""

    def __getitem__(self, index: int) -> tuple[Any, int]:
        ev = self.load(index)
        return (self.transform(ev) if self.transform else ev), self.targets[index]
