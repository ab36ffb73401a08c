"""DVS128 Gesture: Tonic's prepared `.npy` layout and the original IBM release cut by label times.

Two layouts are read (`layout="auto"` picks whichever is present, Tonic's first):

* Tonic's prepared release: `ROOT/DVSGesture/ibmGestureTrain/userNN_<lighting>/<class>.npy`
  (and `ibmGestureTest`); each `.npy` is an `[N, 4]` array of columns x, y, p, t with t in
  milliseconds. Tonic's archives (`ibmGestureTrain.tar.gz`, `ibmGestureTest.tar.gz`) in
  `ROOT/DVSGesture` are extracted when the folder is missing and kept, so nothing is fetched
  twice. Splits: 1077 train / 264 test samples.
* The original IBM release: `ROOT/DvsGesture/userNN_<lighting>.aedat` (AEDAT 3.1) with
  `userNN_<lighting>_labels.csv` (`class,startTime_usec,endTime_usec`, classes 1..11) and
  `trials_to_train.txt` / `trials_to_test.txt`. Each labelled interval `[start, end)` of a
  trial becomes one sample, with timestamps relative to `start`. Splits: 1176 train / 288 test.

11 classes, or 10 with `num_classes=10` (the "other gestures" samples are left out). Each
sample carries its user number and lighting condition (`users`, `lighting`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spikestream import EVENT_DTYPE, SensorSize, make_events
from spikestream.datasets.download import MissingDataError, extract_archive, fetch_archive
from spikestream.datasets.io import read_events
from spikestream.datasets.registry import register_dataset, split_parts
from spikestream.datasets.samples import LabelledEvents, file_key

CLASSES = [
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
]
SENSOR_SIZE: SensorSize = (128, 128, 2)

# Tonic's prepared archives (same URLs and checksums as tonic.datasets.DVSGesture).
TONIC_ARCHIVES = {
    True: ("ibmGestureTrain", "ibmGestureTrain.tar.gz",
           "https://figshare.com/ndownloader/files/38022171", "3a8f0d4120a166bac7591f77409cb105"),
    False: ("ibmGestureTest", "ibmGestureTest.tar.gz",
            "https://figshare.com/ndownloader/files/38020584", "56070e45dadaa85fff82e0fbfbc06de5"),
}

LAYOUT_HELP = (
    "DVS Gesture expects Tonic's layout "
    "ROOT/DVSGesture/ibmGestureTrain/userNN_<lighting>/<class>.npy "
    "(and ibmGestureTest; or Tonic's ibmGestureTrain.tar.gz/ibmGestureTest.tar.gz in "
    "ROOT/DVSGesture), or the original IBM release ROOT/DvsGesture/ with userNN_<lighting>.aedat, "
    "userNN_<lighting>_labels.csv, trials_to_train.txt and trials_to_test.txt."
)


def parse_trial_name(name: str) -> tuple[int, str]:
    """`"user07_fluorescent_led"` -> `(7, "fluorescent_led")`."""
    user, _, lighting = name.partition("_")
    if not user.startswith("user") or not user[4:].isdigit() or not lighting:
        raise ValueError(f"{name!r} is not a trial name (expected userNN_<lighting>)")
    return int(user[4:]), lighting


def read_label_csv(path: Path) -> list[tuple[int, int, int]]:
    """`(class 0..10, start_us, end_us)` rows of an IBM `_labels.csv`."""
    rows = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip() or not row[0].strip().lstrip("-").isdigit():
                continue  # header or blank line
            try:
                cls, start, end = (int(v) for v in row[:3])
            except ValueError as e:
                raise ValueError(f"{path} line {n}: {row} (expected class,start_us,end_us)") from e
            if not 1 <= cls <= 11 or end <= start:
                raise ValueError(f"{path} line {n}: class {cls}, [{start}, {end}) µs is invalid")
            rows.append((cls - 1, start, end))
    return rows


def tonic_npy_to_events(arr: np.ndarray, source: Any) -> np.ndarray:
    """Tonic's `[N, 4]` (x, y, p, t in ms) array to `EVENT_DTYPE`, t in µs."""
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{source}: array of shape {arr.shape} (expected [N, 4] x, y, p, t[ms])")
    t_us = np.rint(arr[:, 3].astype(np.float64) * 1000).astype(np.int64)
    return make_events(arr[:, 0], arr[:, 1], t_us, arr[:, 2])


class DVSGesture(LabelledEvents):
    """DVS128 Gesture samples as `(events, label)` (see the module doc for layouts and splits)."""

    sensor_size: SensorSize = SENSOR_SIZE

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        *,
        num_classes: int = 11,
        layout: str = "auto",
        transform: Callable[[np.ndarray], Any] | None = None,
        download: bool = False,
    ) -> None:
        if num_classes not in (10, 11):
            raise ValueError(f"num_classes {num_classes} (expected 11, or 10 without 'other')")
        if layout not in {"auto", "tonic", "ibm"}:
            raise ValueError(f"layout {layout!r} (expected 'auto', 'tonic' or 'ibm')")
        self.root = Path(root)
        self.train = train
        self.num_classes = num_classes
        self.classes = CLASSES[:num_classes]
        self.transform = transform
        self.files: list[Path] = []
        self.targets: list[int] = []
        self.users: list[int] = []
        self.lighting: list[str] = []
        self.intervals: list[tuple[int, int] | None] = []  # [start, end) µs in the IBM layout
        self._trial_cache: tuple[Path, np.ndarray] | None = None

        tonic_dir = self._tonic_dir(download and layout != "ibm")
        ibm_dir = self._ibm_dir()
        if layout in {"auto", "tonic"} and tonic_dir is not None:
            self.layout = "tonic"
            self._scan_tonic(tonic_dir)
        elif layout in {"auto", "ibm"} and ibm_dir is not None:
            self.layout = "ibm"
            self._scan_ibm(ibm_dir)
        else:
            want = {"auto": "", "tonic": " (Tonic layout)", "ibm": " (IBM layout)"}[layout]
            raise MissingDataError(f"no DVS Gesture data{want} under {self.root}. {LAYOUT_HELP}")
        if not self.files:
            raise MissingDataError(f"no samples found in the {self.layout} layout under "
                                   f"{self.root}. {LAYOUT_HELP}")

    # --- Tonic's prepared layout -----------------------------------------------------------
    def _tonic_dir(self, download: bool) -> Path | None:
        folder, archive, url, md5 = TONIC_ARCHIVES[self.train]
        for base in (self.root / "DVSGesture", self.root):
            if (base / folder).is_dir():
                return base / folder
        base = self.root / "DVSGesture"
        if (base / archive).is_file() or download:
            fetch_archive(url, base / archive, md5=md5, download=download, what=LAYOUT_HELP)
            extract_archive(base / archive, base)
            if (base / folder).is_dir():
                return base / folder
        return None

    def _scan_tonic(self, folder: Path) -> None:
        for trial in sorted(d for d in folder.iterdir() if d.is_dir()):
            user, lighting = parse_trial_name(trial.name)
            files = [f for f in trial.glob("*.npy") if f.stem.isdigit()]
            for f in sorted(files, key=lambda f: int(f.stem)):
                label = int(f.stem)
                if label >= self.num_classes:
                    continue
                self._add(f, label, user, lighting, None)

    # --- the original IBM release ----------------------------------------------------------
    def _ibm_dir(self) -> Path | None:
        for base in (self.root / "DvsGesture", self.root):
            if (base / "trials_to_train.txt").is_file():
                return base
        return None

    def _scan_ibm(self, folder: Path) -> None:
        listing = folder / ("trials_to_train.txt" if self.train else "trials_to_test.txt")
        if not listing.is_file():
            raise MissingDataError(f"{listing} is missing. {LAYOUT_HELP}")
        for line in listing.read_text().split():
            name = Path(line.strip()).name
            if not name.endswith(".aedat"):
                continue
            aedat = folder / name
            labels = folder / (aedat.stem + "_labels.csv")
            for need in (aedat, labels):
                if not need.is_file():
                    raise MissingDataError(f"{listing} lists {name} but {need} is missing")
            user, lighting = parse_trial_name(aedat.stem)
            for label, start, end in read_label_csv(labels):
                if label < self.num_classes:
                    self._add(aedat, label, user, lighting, (start, end))

    def _add(self, f: Path, label: int, user: int, lighting: str,
             interval: tuple[int, int] | None) -> None:
        self.files.append(f)
        self.targets.append(label)
        self.users.append(user)
        self.lighting.append(lighting)
        self.intervals.append(interval)

    # --- samples ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def _trial_events(self, path: Path) -> np.ndarray:
        if self._trial_cache is None or self._trial_cache[0] != path:
            self._trial_cache = (path, read_events(path).events)
        return self._trial_cache[1]

    def load(self, index: int) -> np.ndarray:
        """The events of sample `index` (`EVENT_DTYPE`, t in µs), untransformed."""
        f, interval = self.files[index], self.intervals[index]
        if interval is None:
            return tonic_npy_to_events(np.load(f), f)
        ev = self._trial_events(f)
        start, end = interval
        lo, hi = np.searchsorted(ev["t"], [start, end], side="left")
        out = np.array(ev[lo:hi], dtype=EVENT_DTYPE)
        out["t"] -= start
        return out

    def sample_key(self, index: int) -> str:
        interval = self.intervals[index]
        key = file_key(self.files[index])
        return key if interval is None else f"{key}|{interval[0]}-{interval[1]}"

    def __repr__(self) -> str:
        part = "train" if self.train else "test"
        return (f"DVSGesture({str(self.root)!r}, {part}, layout={self.layout}, "
                f"classes={self.num_classes}, samples={len(self)})")


@register_dataset("dvsgesture", frame_size=(128, 128), binning={"n_event_bins": 16},
                  options=("num_classes", "layout"))
def _create(root: Path, part: str, *, download: bool = False, num_classes: int = 11,
            layout: str = "auto") -> Any:
    return split_parts(lambda train: DVSGesture(root, train=train, num_classes=num_classes,
                                                layout=layout, download=download), part)
