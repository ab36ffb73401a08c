"""N-Caltech101 in Tonic's layout, with integer labels, an optional background class and a split.

Layout: `ROOT/NCALTECH101/Caltech101/<class>/image_NNNN.bin` (what Tonic extracts; `ROOT` may
also be the `NCALTECH101` or `Caltech101` folder itself). The recordings have no official
train/test split, so `split="train"|"test"` draws a seeded split stratified by class
(`test_fraction` of each class goes to test), and `"all"` keeps every sample.

Labels are integers: the 101 object classes in case-insensitive name order get 0..100; the
`BACKGROUND_Google` folder is left out unless `background=True`, when it becomes class 101.
Events are shifted so each sample's minimum x and y are 0 (as Tonic does) and then either
placed on a fixed canvas (default 240x180, events beyond it dropped) or resized, each sample's
own extent scaled to `resize=(W, H)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spikestream import SensorSize
from spikestream.datasets.download import MissingDataError, extract_archive, fetch_archive
from spikestream.datasets.io import read_events
from spikestream.datasets.registry import register_dataset
from spikestream.datasets.samples import LabelledEvents, file_key, stratified_split

BACKGROUND = "BACKGROUND_Google"
CANVAS = (240, 180)
ARCHIVE = "N-Caltech101-archive.zip"
INNER_ARCHIVE = "Caltech101.zip"
URL = (
    "https://data.mendeley.com/public-files/datasets/cy6cvx3ryv/files/"
    "36b5c52a-b49d-4853-addb-a836a8883e49/file_downloaded"
)
MD5 = "66201824eabb0239c7ab992480b50ba3"

LAYOUT_HELP = (
    "N-Caltech101 expects ROOT/NCALTECH101/Caltech101/<class>/image_NNNN.bin (Tonic's layout), or "
    f"Tonic's {ARCHIVE} (or its inner {INNER_ARCHIVE}) in ROOT/NCALTECH101 to extract."
)


class NCaltech101(LabelledEvents):
    """N-Caltech101 samples as `(events, label)` with integer labels (see the module doc)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        background: bool = False,
        test_fraction: float = 0.2,
        seed: int = 0,
        canvas: tuple[int, int] = CANVAS,
        resize: tuple[int, int] | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
        download: bool = False,
    ) -> None:
        if split not in {"train", "test", "all"}:
            raise ValueError(f"split {split!r} (expected 'train', 'test' or 'all')")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.canvas = tuple(int(v) for v in canvas)
        self.resize = tuple(int(v) for v in resize) if resize is not None else None
        folder = self._find(download)
        names = sorted((d.name for d in folder.iterdir() if d.is_dir() and d.name != BACKGROUND),
                       key=str.lower)
        if background and (folder / BACKGROUND).is_dir():
            names.append(BACKGROUND)
        self.classes: list[str] = names
        files: list[Path] = []
        targets: list[int] = []
        for label, name in enumerate(names):
            for f in sorted((folder / name).glob("*.bin")):
                files.append(f)
                targets.append(label)
        if not files:
            raise MissingDataError(f"{folder} holds no <class>/*.bin files. {LAYOUT_HELP}")
        if split == "all":
            keep = list(range(len(files)))
        else:
            tr, te = stratified_split(targets, test_fraction, seed)
            keep = tr if split == "train" else te
        self.files = [files[i] for i in keep]
        self.targets = [targets[i] for i in keep]
        self.folder = folder
        self.event_params = {"canvas": self.canvas, "resize": self.resize}

    @property
    def sensor_size(self) -> SensorSize:
        w, h = self.resize if self.resize is not None else self.canvas
        return (w, h, 2)

    def _find(self, download: bool) -> Path:
        for cand in (self.root / "NCALTECH101" / "Caltech101", self.root / "Caltech101",
                     self.root):
            if cand.is_dir() and any(cand.glob("*/*.bin")):
                return cand
        base = self.root / "NCALTECH101"
        inner = base / INNER_ARCHIVE
        if (base / ARCHIVE).is_file() or (download and not inner.is_file()):
            fetch_archive(URL, base / ARCHIVE, md5=MD5, download=download, what=LAYOUT_HELP)
            extract_archive(base / ARCHIVE, base)
        if inner.is_file():
            extract_archive(inner, base)
        if (base / "Caltech101").is_dir():
            return base / "Caltech101"
        raise MissingDataError(f"no N-Caltech101 data under {self.root}. {LAYOUT_HELP}")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """Events of sample `index`, shifted to a zero minimum, then on the canvas or resized."""
        ev = read_events(self.files[index]).events.copy()
        if len(ev) == 0:
            return ev
        ev["x"] -= ev["x"].min()
        ev["y"] -= ev["y"].min()
        if self.resize is not None:
            w, h = self.resize
            ext_x, ext_y = int(ev["x"].max()) + 1, int(ev["y"].max()) + 1
            ev["x"] = (ev["x"].astype(np.int64) * w) // ext_x
            ev["y"] = (ev["y"].astype(np.int64) * h) // ext_y
            return ev
        w, h = self.canvas
        keep = (ev["x"] < w) & (ev["y"] < h)
        return ev if keep.all() else ev[keep]

    def sample_key(self, index: int) -> str:
        return file_key(self.files[index])

    def __repr__(self) -> str:
        return (f"NCaltech101({str(self.root)!r}, {self.split}, classes={len(self.classes)}, "
                f"samples={len(self)})")


@register_dataset("ncaltech101", frame_size=(128, 128), binning={"n_event_bins": 16},
                  augment="flip,roll,drop", options=("background", "val_fraction", "split_seed"))
def _create(root: Path, part: str, *, download: bool = False, background: bool = False,
            val_fraction: float = 0.2, split_seed: int = 0) -> Any:
    return NCaltech101(root, part, background=background, test_fraction=val_fraction,
                       seed=split_seed, download=download)
