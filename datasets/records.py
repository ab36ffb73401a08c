"""Joining arrays of packed records (`EVENT_DTYPE`, a decoder's own dtype)."""

from __future__ import annotations

import numpy as np


def join_records(parts: list[np.ndarray]) -> np.ndarray:
    """`parts` (non-empty, one structured dtype) as one array: the first itself when alone, else
    joined as bytes (numpy joins packed records field by field: 3-10x slower)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([np.ascontiguousarray(p).view(np.uint8) for p in parts]).view(
        parts[0].dtype)
