"""NCaltech101 in Tonic's layout, built from real N-MNIST/N-Caltech101 40-bit .bin bytes."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tonic

from spikestream.datasets import MissingDataError, NCaltech101

CLASSES = {"accordion": 6, "airplanes": 9, "Faces_easy": 5, "BACKGROUND_Google": 4}


@pytest.fixture(scope="module")
def root(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = real_data / "nmnist-small" / "train"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    base = tmp_path_factory.mktemp("ncal")
    k = 1
    for name, n in CLASSES.items():
        d = base / "NCALTECH101" / "Caltech101" / name
        d.mkdir(parents=True)
        for i in range(n):
            shutil.copy(src / f"{k}.bs2", d / f"image_{i + 1:04d}.bin")
            k += 1
    return base


def test_labels_and_background(root: Path) -> None:
    ds = NCaltech101(root, "all")
    assert ds.classes == ["accordion", "airplanes", "Faces_easy"]  # case-insensitive order
    assert Counter(ds.targets) == {0: 6, 1: 9, 2: 5}
    bg = NCaltech101(root, "all", background=True)
    assert bg.classes[-1] == "BACKGROUND_Google" and len(bg) == 24
    assert Counter(bg.targets)[3] == 4
    assert all(isinstance(t, int) for t in bg.targets)


def test_events_match_tonic_and_canvas(root: Path) -> None:
    ref_cls = type("NCALTECH101", (tonic.datasets.NCALTECH101,), {"_check_exists": lambda s: True})
    ref = ref_cls(str(root))
    by_path = {p: i for i, p in enumerate(ref.data)}
    ds = NCaltech101(root, "all", background=True)
    assert ds.sensor_size == (240, 180, 2)
    for i in range(0, len(ds), 3):
        ev, label = ds[i]
        rev, rname = ref[by_path[str(ds.files[i])]]
        assert ds.classes[label] == rname
        for f in "xytp":
            np.testing.assert_array_equal(ev[f], rev[f])
        assert ev["x"].min() == 0 and ev["y"].min() == 0
    small = NCaltech101(root, "all", canvas=(20, 16))
    ev = small.load(0)
    full = ds.load(ds.files.index(small.files[0]))
    keep = (full["x"] < 20) & (full["y"] < 16)
    np.testing.assert_array_equal(ev, full[keep])
    assert small.sensor_size == (20, 16, 2)


def test_resize_scales_each_sample_extent(root: Path) -> None:
    ds = NCaltech101(root, "all", resize=(17, 10))
    plain = NCaltech101(root, "all")
    assert ds.sensor_size == (17, 10, 2)
    ev, ref = ds.load(2), plain.load(2)
    wx, wy = int(ref["x"].max()) + 1, int(ref["y"].max()) + 1
    np.testing.assert_array_equal(ev["x"], np.floor(ref["x"] * 17 / wx).astype(int))
    np.testing.assert_array_equal(ev["y"], np.floor(ref["y"] * 10 / wy).astype(int))
    assert ev["x"].max() == 16 and ev["y"].max() == 9
    assert ds.sample_key(2) == plain.sample_key(2) and ds.event_params != plain.event_params


def test_seeded_stratified_split(root: Path) -> None:
    tr = NCaltech101(root, "train", test_fraction=0.25, seed=7)
    te = NCaltech101(root, "test", test_fraction=0.25, seed=7)
    assert not set(tr.files) & set(te.files)
    assert len(tr) + len(te) == 20
    assert Counter(te.targets) == {0: round(6 * 0.25), 1: round(9 * 0.25), 2: round(5 * 0.25)}
    assert NCaltech101(root, "test", test_fraction=0.25, seed=7).files == te.files
    assert NCaltech101(root, "test", test_fraction=0.25, seed=8).files != te.files


def test_missing_data_error(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"NCALTECH101/Caltech101/<class>/image_NNNN\.bin"):
        NCaltech101(tmp_path)
    with pytest.raises(ValueError, match="split"):
        NCaltech101(tmp_path, "validation")
