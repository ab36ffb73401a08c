"""Any `tonic.datasets` class as a spikestream event dataset, and our events into Tonic.

`tonic_dataset("POKERDVS", root, train=True)` (or `TonicDataset(tonic_instance)`) yields
`(events, label)` in `EVENT_DTYPE` with the class's sensor size, classes and targets, so it
goes through `to_frames`, `FrameDataset` and training like our own datasets. Tonic's own
download stays off unless `download=True`: a missing dataset raises `MissingDataError` naming
the folder Tonic looks in. `create_tonic_dataset` is the entry a dataset registry calls for
`tonic:NAME`.

Our events through Tonic's transforms: every transform takes `EVENT_DTYPE` arrays except
`ToVoxelGrid`, whose function rewrites polarity 0 as -1 in place
(`pols[pols == 0] = -1` in `tonic/functional/to_voxel_grid.py`) and so fails on an unsigned
`p:u1` ("Python integer -1 out of bounds for uint8") and would also change the caller's array.
`tonic_events(events)` gives a copy with a signed polarity (`p:i1`, values 0/1), which every
transform, `ToVoxelGrid` included, accepts; `from_tonic_events` converts back.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spikestream import EVENT_DTYPE, SensorSize, make_events
from spikestream.datasets.download import MissingDataError

#: `EVENT_DTYPE` with a signed polarity (values 0/1), for Tonic functions that write -1 into p
TONIC_EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "i1")])


def tonic_events(events: np.ndarray) -> np.ndarray:
    """A copy of `EVENT_DTYPE` events with a signed polarity, for any Tonic transform."""
    ev = np.asarray(events)
    out = np.empty(len(ev), TONIC_EVENT_DTYPE)
    for name in ("x", "y", "t", "p"):
        out[name] = ev[name]
    return out


def from_tonic_events(events: np.ndarray) -> np.ndarray:
    """Tonic events (any integer/float/bool fields x, y, t, p; p in {0, 1}, {-1, 1} or bool)
    as `EVENT_DTYPE`, time-ordered (a stable sort where needed). Negative or fractional
    coordinates and timestamps are errors, never wrapped."""
    ev = np.asarray(events)
    names = set(ev.dtype.names or ())
    if not {"x", "y", "t", "p"} <= names:
        raise ValueError(f"Tonic events need fields x, y, t, p; got {ev.dtype.names}")
    x, y, t = (np.asarray(ev[k]) for k in ("x", "y", "t"))
    for k, a in (("x", x), ("y", y), ("t", t)):
        if len(a) and (a.min() < 0 or (a.dtype.kind == "f" and np.any(a != np.floor(a)))):
            i = int(np.flatnonzero((a < 0) | (a != np.floor(a)))[0])
            raise ValueError(f"event {i}: {k} = {a[i]} is not a non-negative integer")
        if k != "t" and len(a) and a.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"{k} = {a.max()} does not fit the event contract (u2)")
    out = make_events(x, y, t, np.asarray(ev["p"]).astype(np.float64) > 0)
    if len(out) > 1 and np.any(np.diff(out["t"]) < 0):
        out = out[np.argsort(out["t"], kind="stable")]
    return out


def _tonic_class(name: str) -> type:
    import tonic.datasets

    table = {n.lower(): getattr(tonic.datasets, n) for n in dir(tonic.datasets)
             if isinstance(getattr(tonic.datasets, n), type)}
    cls = table.get(name.lower())
    if cls is None:
        known = sorted(n for n in dir(tonic.datasets) if isinstance(getattr(tonic.datasets, n),
                                                                      type))
        raise ValueError(f"tonic has no dataset {name!r}; it has: {', '.join(known)}")
    return cls


def _no_download(cls: type) -> type:
    """`cls` whose `download` raises instead of fetching (same class name, so the same folder)."""

    def download(self: Any) -> None:
        raise MissingDataError(
            f"tonic {cls.__name__} is not at {self.location_on_system} (looked for "
            f"{getattr(self, 'filename', 'its archive')} and its extracted folder); place it "
            "there or pass download=True")

    return type(cls.__name__, (cls,), {"download": download, "__module__": cls.__module__})


class TonicDataset:
    """`(events, label)` samples of a Tonic dataset instance, in `EVENT_DTYPE`.

    `sensor_size` comes from the class (`(W, H, P)`); give it where Tonic has none (e.g.
    NCALTECH101, whose recordings differ in size). Events outside it are an error.
    `transform(events) -> events`, if given, runs on our events after conversion.
    """

    def __init__(self, dataset: Any, *, sensor_size: SensorSize | None = None,
                 classes: list[str] | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.dataset = dataset
        size = sensor_size or getattr(dataset, "sensor_size", None)
        if size is None:
            raise ValueError(f"tonic {type(dataset).__name__} has no fixed sensor size; "
                             "pass sensor_size=(W, H, 2)")
        self.sensor_size: SensorSize = tuple(int(s) for s in size)  # type: ignore[assignment]
        self.targets: list[int] = [int(t) for t in getattr(dataset, "targets", [])]
        if len(self.targets) != len(dataset):
            self.targets = [int(dataset[i][1]) for i in range(len(dataset))]
        names = classes if classes is not None else getattr(dataset, "classes", None)
        if isinstance(names, dict):
            names = [k for k, _ in sorted(names.items(), key=lambda kv: kv[1])]
        n_classes = max(self.targets, default=-1) + 1
        self.classes = [str(c) for c in names] if names else [str(i) for i in range(n_classes)]
        self.transform = transform
        self.event_params = {"tonic": type(dataset).__name__,
                             "train": getattr(dataset, "train", None),
                             "first_saccade_only": getattr(dataset, "first_saccade_only", None),
                             "stabilize": getattr(dataset, "stabilize", None)}

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> np.ndarray:
        """Sample `index`'s events in `EVENT_DTYPE`, checked against the sensor size."""
        events = from_tonic_events(self.dataset[index][0])
        w, h = self.sensor_size[:2]
        bad = np.flatnonzero((events["x"] >= w) | (events["y"] >= h))
        if bad.size:
            e = events[int(bad[0])]
            raise ValueError(f"tonic {type(self.dataset).__name__} sample {index}: event "
                             f"({e['x']}, {e['y']}) outside the {w}x{h} sensor")
        return self.transform(events) if self.transform is not None else events

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.load(index), self.targets[index]

    def sample_key(self, index: int) -> str:
        """Identity for frame caching: the file (path, size, mtime) or the array's digest."""
        item = self.dataset.data[index] if hasattr(self.dataset, "data") else None
        if isinstance(item, (str, os.PathLike)) and Path(item).is_file():
            st = Path(item).stat()
            return f"{Path(item).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if isinstance(item, np.ndarray):
            return hashlib.sha256(np.ascontiguousarray(item).tobytes()).hexdigest()
        return hashlib.sha256(self.load(index).tobytes()).hexdigest()

    def __repr__(self) -> str:
        return f"TonicDataset({type(self.dataset).__name__}, samples={len(self)})"


def tonic_dataset(name: str, root: str | Path, *, train: bool = True, download: bool = False,
                  sensor_size: SensorSize | None = None, **kwargs: Any) -> TonicDataset:
    """Tonic's dataset class `name` (case-insensitive: `POKERDVS`, `NMNIST`, `DVSGesture`,
    `CIFAR10DVS`, `NCALTECH101`, `ASLDVS`, ...) from `root` (Tonic's `save_to`; the class
    adds its own sub-folder), its training or test part where it has one."""
    cls = _tonic_class(name)
    if not download:
        cls = _no_download(cls)
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        kwargs["train"] = train
    elif not train:
        raise ValueError(f"tonic {name} has no train/test split; use it whole (train=True)")
    return TonicDataset(cls(save_to=str(root), **kwargs), sensor_size=sensor_size)


def create_tonic_dataset(name: str, root: str | Path | None, *, train: bool = True,
                         download: bool = False, **kwargs: Any) -> TonicDataset:
    """The registry's entry for `tonic:NAME`: `name` is the part after `tonic:`."""
    if root is None:
        raise ValueError(f"tonic:{name} needs a root folder (Tonic's save_to)")
    return tonic_dataset(name, root, train=train, download=download, **kwargs)


__all__ = ["EVENT_DTYPE", "TONIC_EVENT_DTYPE", "TonicDataset", "create_tonic_dataset",
           "from_tonic_events", "tonic_dataset", "tonic_events"]
