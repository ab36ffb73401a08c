"""Binned frames of an event dataset, cached on disk under a key that names what made them.

Tonic's disk cache keys frames by sample index only, so changing a transform or a dataset
serves stale frames. Here the key is a SHA-256 of the dataset's class and event parameters,
the sample's identity (`dataset.sample_key(i)`: file, size, mtime, cut interval, or a
generator seed) and the binning parameters together with the binner's qualified name.
Change any of them and the key changes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

Binner = Callable[..., np.ndarray]


class EventDataset(Protocol):
    """What `FrameDataset` needs from a dataset of `(events, label)` samples."""

    sensor_size: tuple[int, int, int]
    targets: list[int]

    def __len__(self) -> int: ...
    def load(self, index: int) -> np.ndarray: ...
    def sample_key(self, index: int) -> str: ...


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (np.dtype, type)):
        return str(np.dtype(obj))
    return repr(obj)


def binner_name(binner: Any) -> str:
    """A stable name for a binner: `module.qualname`, with a partial's bound arguments."""
    if isinstance(binner, functools.partial):
        args = [binner_name(a) if callable(a) else _canonical(a) for a in binner.args]
        kw = {k: (binner_name(v) if callable(v) else _canonical(v))
              for k, v in sorted(binner.keywords.items())}
        return f"partial({binner_name(binner.func)}, {args}, {kw})"
    return f"{getattr(binner, '__module__', '?')}.{getattr(binner, '__qualname__', type(binner))}"


def frame_key(dataset: Any, index: int, binner: Binner, params: dict[str, Any]) -> str:
    """The cache key of sample `index` binned by `binner(**params)` (hex SHA-256)."""
    record = {
        "dataset": type(dataset).__name__,
        "event_params": getattr(dataset, "event_params", {}),
        "sensor_size": list(dataset.sensor_size),
        "sample": dataset.sample_key(index),
        "binner": binner_name(binner),
        "params": params,
    }
    text = json.dumps(_canonical(record), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class FrameCache:
    """A folder of `.npy` frame arrays, one per key; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):  # a torn or foreign file: recompute and overwrite
            return None

    def put(self, key: str, frames: np.ndarray) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, frames, allow_pickle=False)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class FrameDataset(Dataset):
    """`(frames[T, P, H, W] float tensor, label)` from an event dataset and a binner.

    `binner(events, sensor_size, **params)` makes the frames (the project's `to_frames`);
    `cache_dir` keeps them on disk (see the module doc), `in_memory` also keeps them in RAM.
    `augment(frames) -> frames`, if given, runs on every access, after the cache.
    """

    def __init__(
        self,
        dataset: EventDataset,
        binner: Binner,
        params: dict[str, Any],
        *,
        cache_dir: str | Path | None = None,
        in_memory: bool = False,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.dataset = dataset
        self.binner = binner
        self.params = dict(params)
        self.cache = FrameCache(cache_dir) if cache_dir is not None else None
        self.memory: dict[int, np.ndarray] | None = {} if in_memory else None
        self.augment = augment
        self.targets = list(dataset.targets)
        self.classes = list(getattr(dataset, "classes", []))
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def without_augment(self) -> FrameDataset:
        """The same samples (sharing the RAM and disk caches) with no augmentation."""
        view = copy.copy(self)
        view.augment = None
        return view

    def frames(self, index: int) -> np.ndarray:
        """The binned frames of sample `index` (from RAM, the disk cache, or the binner)."""
        if self.memory is not None and index in self.memory:
            return self.memory[index]
        key = frame_key(self.dataset, index, self.binner, self.params) if self.cache else None
        arr = self.cache.get(key) if self.cache and key else None
        if arr is None:
            self.misses += 1
            arr = np.asarray(
                self.binner(self.dataset.load(index), self.dataset.sensor_size, **self.params)
            )
            if self.cache and key:
                self.cache.put(key, arr)
        else:
            self.hits += 1
        if self.memory is not None:
            self.memory[index] = arr
        return arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.ascontiguousarray(self.frames(index))).float()
        if self.augment is not None:
            x = self.augment(x)
        return x, int(self.targets[index])
