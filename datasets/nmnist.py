"""N-MNIST: Tonic's `Train/<digit>/*.bin` layout, and a flat folder of `<id>.bin|.bs2` files.

The flat layout is the one of slayerPytorch's NMNISTsmall (`../shared/data/nmnist-small/train`):
`labels.txt` starts with the line `#sample #class` and then holds `<id> <class>` lines, and the
events of sample `<id>` are in `<id>.bin` or `<id>.bs2` (the same 40-bit N-MNIST records). A
flat folder has no test part, so `train=True/False` selects a seeded, stratified split of it
(`test_fraction`, `seed`); the two parts never share a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spikestream import SensorSize
from spikestream.datasets.download import MissingDataError, extract_archive, fetch_archive
from spikestream.datasets.io import read_events
from spikestream.datasets.registry import register_dataset, split_parts
from spikestream.datasets.samples import LabelledEvents, file_key, stratified_split

CLASSES = [str(d) for d in range(10)]
SENSOR_SIZE: SensorSize = (34, 34, 2)

# Tonic's archive of the N-MNIST training and test sets (the same URLs and checksums).
_TONIC_BASE = "https://data.mendeley.com/public-files/datasets/468j46mzdv/files/"
ARCHIVES = {
    True: ("Train", "train.zip",
           _TONIC_BASE + "39c25547-014b-4137-a934-9d29fa53c7a0/file_downloaded",
           "20959b8e626244a1b502305a9e6e2031"),
    False: ("Test", "test.zip",
            _TONIC_BASE + "05a4d654-7e03-4c15-bdfa-9bb2bcbea494/file_downloaded",
            "69ca8762b2fe404d9b9bad1103e97832"),
}

LAYOUT_HELP = (
    "N-MNIST expects either ROOT/Train/<digit>/*.bin and ROOT/Test/<digit>/*.bin (Tonic's layout, "
    "also ROOT/NMNIST/Train/...; Tonic's train.zip/test.zip in ROOT/NMNIST is extracted), or a "
    "flat folder ROOT (or ROOT/train) of <id>.bin or <id>.bs2 files with a labels.txt of "
    "'#sample #class' lines."
)


def read_labels_txt(path: Path) -> list[tuple[str, int]]:
    """Parse a `#sample #class` labels file into `(sample_id, class)` pairs, in file order."""
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path} line {n}: {line!r} (expected '<sample> <class>')")
        try:
            pairs.append((parts[0], int(parts[1])))
        except ValueError as e:
            raise ValueError(f"{path} line {n}: class {parts[1]!r} is not an integer") from e
    if not pairs:
        raise ValueError(f"{path}: no '<sample> <class>' lines")
    return pairs


class NMNIST(LabelledEvents):
    """N-MNIST samples as `(events, digit)`; events in the project's `EVENT_DTYPE`, 34x34 sensor.

    Parameters: `root` (see `LAYOUT_HELP`), `train`, `transform` (applied to the events, Tonic
    style), `test_fraction` and `seed` (flat layout only), `download` (Tonic's archive, where a
    network exists; never re-downloaded once verified).
    """

    classes = CLASSES
    sensor_size: SensorSize = SENSOR_SIZE
    event_filters = ("crop_to_sensor",)  # `load` drops events outside the 34x34 sensor

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        test_fraction: float = 0.2,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        self.root = Path(root)
        self.train = train
        self.transform = transform
        self.files: list[Path] = []
        self.targets: list[int] = []
        self.layout = self._find(download)
        if self.layout == "flat":
            flat = self._flat_dir()
            assert flat is not None
            pairs = read_labels_txt(flat / "labels.txt")
            files, targets = [], []
            for sid, label in pairs:
                f = next((flat / f"{sid}{ext}" for ext in (".bin", ".bs2")
                          if (flat / f"{sid}{ext}").is_file()), None)
                if f is None:
                    raise MissingDataError(
                        f"{flat / 'labels.txt'} lists sample {sid} but neither {sid}.bin nor "
                        f"{sid}.bs2 is in {flat}"
                    )
                if not 0 <= label < 10:
                    raise ValueError(f"{flat / 'labels.txt'}: sample {sid} has class {label}")
                files.append(f)
                targets.append(label)
            tr, te = stratified_split(targets, test_fraction, seed)
            keep = tr if train else te
            self.files = [files[i] for i in keep]
            self.targets = [targets[i] for i in keep]

    # --- layout discovery -------------------------------------------------------------------
    def _tonic_dirs(self) -> list[Path]:
        return [self.root, self.root / "NMNIST"]

    def _flat_dir(self) -> Path | None:
        for d in (self.root, self.root / "train"):
            if (d / "labels.txt").is_file():
                return d
        return None

    def _find(self, download: bool) -> str:
        folder, archive, url, md5 = ARCHIVES[self.train]
        for base in self._tonic_dirs():
            if (base / folder).is_dir():
                self._scan_digits(base / folder)
                return "tonic"
        if self._flat_dir() is not None:
            return "flat"
        base = self.root / "NMNIST"
        if (base / archive).is_file() or download:
            fetch_archive(url, base / archive, md5=md5, download=download, what=LAYOUT_HELP)
            extract_archive(base / archive, base)
            if (base / folder).is_dir():
                self._scan_digits(base / folder)
                return "tonic"
        raise MissingDataError(f"no N-MNIST data under {self.root}. {LAYOUT_HELP}")

    def _scan_digits(self, folder: Path) -> None:
        for d in range(10):
            for f in sorted((folder / str(d)).glob("*.bin")):
                self.files.append(f)
                self.targets.append(d)
        if not self.files:
            raise MissingDataError(f"{folder} holds no <digit>/*.bin files. {LAYOUT_HELP}")

    # --- samples ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """The events of sample `index`, untransformed, clipped to the 34x34 sensor."""
        ev = read_events(self.files[index]).events
        keep = (ev["x"] < SENSOR_SIZE[0]) & (ev["y"] < SENSOR_SIZE[1])
        return ev if keep.all() else ev[keep]

    def sample_key(self, index: int) -> str:
        """Identity of sample `index` for frame caching: file, size and modification time."""
        return file_key(self.files[index])

    def __repr__(self) -> str:
        part = "train" if self.train else "test"
        return f"NMNIST({str(self.root)!r}, {part}, layout={self.layout}, samples={len(self)})"


@register_dataset("nmnist", frame_size=(32, 32), binning={"n_time_bins": 8},
                  options=("val_fraction", "split_seed"))
def _create(root: Path, part: str, *, download: bool = False, val_fraction: float = 0.2,
            split_seed: int = 0) -> Any:
    return split_parts(lambda train: NMNIST(root, train=train, test_fraction=val_fraction,
                                            seed=split_seed, download=download), part)
