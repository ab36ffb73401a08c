"""The dataset registry: each dataset module registers a factory under a name, with its defaults.

`create_dataset(name, root=..., part="train"|"test"|"all", **options)` builds the event
dataset (`(events, label)` samples with `sensor_size`, `classes`, `sample_key`);
`dataset_defaults(name)` gives the training defaults (frame size, binning, augmentation) the
command line starts from. A new dataset is a module that calls `register_dataset`; nothing
else names datasets.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARTS = ("train", "test", "all")

# modules that register datasets when imported (looked up on first use, so that importing the
# registry does not import every dataset and its dependencies)
_MODULES = (
    "spikestream.datasets.nmnist",
    "spikestream.datasets.dvsgesture",
    "spikestream.datasets.ncaltech101",
    "spikestream.datasets.synthetic",
)


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its factory and its training defaults."""

    name: str
    factory: Callable[..., Any]
    frame_size: tuple[int, int]
    binning: dict[str, Any]
    augment: str = "roll,drop"
    needs_root: bool = True
    options: tuple[str, ...] = field(default_factory=tuple)  # option names the factory reads


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    *,
    frame_size: tuple[int, int],
    binning: dict[str, Any],
    augment: str = "roll,drop",
    needs_root: bool = True,
    options: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `factory(root, part, **options)` under `name` with its defaults."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = DatasetEntry(name, factory, tuple(frame_size), dict(binning),
                                       augment, needs_root, tuple(options))
        return factory

    return wrap


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


TONIC_PREFIX = "tonic:"


def _tonic_entry(name: str) -> DatasetEntry:
    """`tonic:NAME`: any `tonic.datasets` class through `datasets.tonic_adapter`; frames of
    64x64 in 8 equal bins unless the command line says otherwise."""
    from spikestream.datasets.tonic_adapter import create_tonic_dataset

    cls = name[len(TONIC_PREFIX):]

    def factory(root: Path | None, part: str, *, download: bool = False) -> Any:
        return split_parts(lambda train: create_tonic_dataset(cls, root, train=train,
                                                              download=download), part)

    return DatasetEntry(name, factory, (64, 64), {"n_time_bins": 8})


def get_dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of `name` (a clear error naming the known ones otherwise);
    `tonic:NAME` adapts Tonic's dataset class NAME."""
    if name.startswith(TONIC_PREFIX) and len(name) > len(TONIC_PREFIX):
        return _tonic_entry(name)
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))}, "
                         f"or tonic:NAME for a tonic.datasets class") from None


def create_dataset(name: str, root: str | Path | None = None, *, part: str = "train",
                   download: bool = False, **options: Any) -> Any:
    """The event dataset `name`: its training part, its held-out part, or `all` of it.

    `options` are the dataset's own (e.g. `val_fraction`, `split_seed`, `num_classes`); ones a
    dataset does not read are ignored, so one set of options serves every dataset.
    """
    entry = get_dataset_entry(name)
    if part not in PARTS:
        raise ValueError(f"part {part!r} (expected one of {', '.join(PARTS)})")
    if entry.needs_root and root is None:
        raise ValueError(f"dataset {name!r} needs a root folder (--root)")
    picked = {k: v for k, v in options.items() if k in entry.options and v is not None}
    return entry.factory(None if root is None else Path(root), part, download=download, **picked)


class SampleSubset:
    """The samples `indices` of an event dataset, as a dataset of their own (e.g. a stratified
    `--limit`): the same protocol (`load`, `sample_key`, `targets`, `files`), so frames cached
    for a sample are shared with the whole dataset."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.sensor_size = dataset.sensor_size
        self.classes = list(dataset.classes)
        self.targets = [dataset.targets[i] for i in self.indices]
        self.transform = getattr(dataset, "transform", None)
        files = getattr(dataset, "files", None)
        self.files = [files[i] for i in self.indices] if files is not None else None
        self.event_params = getattr(dataset, "event_params", {})
        for attr in ("duration_s", "event_filters"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Any:
        return self.dataset.load(self.indices[index])

    def sample_key(self, index: int) -> str:
        return self.dataset.sample_key(self.indices[index])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.load(index), self.targets[index]


class JoinedParts:
    """Two parts of a dataset (e.g. train and test) as one: `all` for datasets whose parts are
    separate folders or seeded splits. Samples of `first` come first."""

    def __init__(self, first: Any, second: Any) -> None:
        self.parts = (first, second)
        self.sensor_size = first.sensor_size
        self.classes = list(first.classes)
        self.targets = list(first.targets) + list(second.targets)
        self.transform = None
        files = [getattr(p, "files", None) for p in self.parts]
        self.files = files[0] + files[1] if all(f is not None for f in files) else None
        self.event_params = getattr(first, "event_params", {})
        for attr in ("duration_s", "event_filters"):
            if hasattr(first, attr):
                setattr(self, attr, getattr(first, attr))

    def _locate(self, index: int) -> tuple[Any, int]:
        n0 = len(self.parts[0])
        if not 0 <= index < len(self):
            raise IndexError(index)
        return (self.parts[0], index) if index < n0 else (self.parts[1], index - n0)

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])

    def load(self, index: int) -> Any:
        part, i = self._locate(index)
        return part.load(i)

    def sample_key(self, index: int) -> str:
        part, i = self._locate(index)
        return part.sample_key(i)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.load(index), self.targets[index]

    def __repr__(self) -> str:
        return f"JoinedParts({self.parts[0]!r}, {self.parts[1]!r})"


def split_parts(make: Callable[[bool], Any], part: str) -> Any:
    """`make(train)` for `train`/`test`; both parts joined for `all`."""
    if part == "all":
        return JoinedParts(make(True), make(False))
    return make(part == "train")
