"""The running decision of a stream: the softmax of the mean logits over a sliding window of
steps (or all steps so far), its argmax, and the first step whose confidence reaches a
threshold (the early decision). `Decider` keeps its window in a preallocated ring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass
class EarlyDecision:
    """The first step at which the top class probability reached the threshold."""

    step: int
    bin_index: int
    t_us: int | None
    label: int
    name: str | None
    confidence: float


@njit(cache=True)
def _decide(ring: np.ndarray, total: np.ndarray, z: np.ndarray, count: int,
            window: int) -> tuple[np.ndarray, int, float]:  # pragma: no cover - compiled
    """`Decider.update`'s arithmetic in one compiled call (a dozen numpy calls on a vector of
    a few classes cost more than the arithmetic): store `z`, mean of the window (or running
    mean when `window` is 0), softmax, argmax."""
    c = z.shape[0]
    mean = np.empty(c)
    if window == 0:
        for k in range(c):
            total[k] += z[k]
            mean[k] = total[k] / count
    else:
        row = (count - 1) % window
        for k in range(c):
            ring[row, k] = z[k]
        n = min(count, window)
        for k in range(c):
            acc = 0.0
            for i in range(n):  # summed afresh each step: no drift over long streams
                acc += ring[i, k]
            mean[k] = acc / n
    top = mean.max()
    probs = np.exp(mean - top)
    probs /= probs.sum()
    label = int(probs.argmax())
    return probs, label, probs[label]


class Decider:
    """Running decision from per-step logits: softmax of the mean over the last `window`
    steps (all steps when `window` is None), argmax, and the early decision."""

    def __init__(
        self,
        num_classes: int,
        *,
        window: int | None = 16,
        threshold: float = 0.9,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.num_classes = int(num_classes)
        self.window = window
        self.threshold = float(threshold)
        self.class_names = list(class_names) if class_names is not None else None
        # the last `window` logits in a ring (row `count % window` is the oldest once full);
        # with no window, a running sum
        self._ring = np.zeros((window or 1, self.num_classes), np.float64)
        self._sum = np.zeros(self.num_classes, np.float64)
        self._count = 0
        self.early: EarlyDecision | None = None
        # compile (or load from the cache) now, not in the first step of a stream
        _decide(np.zeros_like(self._ring), np.zeros_like(self._sum), self._sum, 1, window or 0)

    def name(self, label: int) -> str | None:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return None

    def update(
        self, logits: np.ndarray, step: int = 0, bin_index: int = 0, t_us: int | None = None
    ) -> tuple[np.ndarray, int, float]:
        """Add one step's logits `[C]`; returns `(probabilities, label, confidence)`."""
        z = np.asarray(logits, np.float64).reshape(self.num_classes)
        self._count += 1
        probs, label, conf = _decide(self._ring, self._sum, z, self._count, self.window or 0)
        if self.early is None and conf >= self.threshold:
            self.early = EarlyDecision(step, bin_index, t_us, label, self.name(label), conf)
        return probs, label, conf
