"""NMNIST: the real flat N-MNIST folder (.bs2 + labels.txt) and Tonic's Train/<digit> layout."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tonic
from tonic.io import read_mnist_file

from spikestream import EVENT_DTYPE
from spikestream.datasets import NMNIST, MissingDataError
from spikestream.datasets.samples import stratified_split

TONIC_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])


@pytest.fixture(scope="module")
def flat(real_data: Path) -> Path:
    d = real_data / "nmnist-small" / "train"
    if not (d / "labels.txt").is_file():
        pytest.skip(f"{d}/labels.txt not found")
    return d


def _labels(flat: Path) -> dict[str, int]:
    rows = np.loadtxt(flat / "labels.txt", dtype=np.int64, comments="#")
    return {str(s): int(c) for s, c in rows}


def test_flat_split_covers_all_real_samples_once(flat: Path) -> None:
    truth = _labels(flat)
    train = NMNIST(flat, train=True, test_fraction=0.2, seed=0)
    test = NMNIST(flat, train=False, test_fraction=0.2, seed=0)
    assert train.layout == test.layout == "flat"
    ids_tr = [f.stem for f in train.files]
    ids_te = [f.stem for f in test.files]
    assert not set(ids_tr) & set(ids_te)
    assert sorted(ids_tr + ids_te, key=int) == sorted(truth, key=int)  # 1,000 samples
    assert len(ids_tr) + len(ids_te) == 1000
    for ds in (train, test):
        assert [truth[f.stem] for f in ds.files] == ds.targets
    # stratified: every digit holds ~20% of its samples out
    per_class = Counter(truth.values())
    held = Counter(test.targets)
    for digit, n in per_class.items():
        assert abs(held[digit] - 0.2 * n) <= 1
    # seeded: the same seed gives the same split, another seed a different one
    assert NMNIST(flat, train=False, seed=0).files == test.files
    assert NMNIST(flat, train=False, seed=1).files != test.files


def test_flat_events_equal_tonic_decoder(flat: Path) -> None:
    ds = NMNIST(flat, train=False)
    for i in range(0, len(ds), 40):
        ev, label = ds[i]
        ref = read_mnist_file(str(ds.files[i]), dtype=TONIC_DTYPE)
        assert ev.dtype == EVENT_DTYPE
        assert label == _labels(flat)[ds.files[i].stem]
        assert 1069 <= len(ev) <= 7152  # PROVENANCE.md
        for f in "xytp":
            np.testing.assert_array_equal(ev[f], ref[f])
        assert ev["x"].max() < 34 and ev["y"].max() < 34


def test_tonic_layout_matches_tonic_dataset(flat: Path, tmp_path: Path) -> None:
    """Real .bs2 bytes placed as NMNIST/Train/<digit>/*.bin: same samples as Tonic's class."""
    truth = _labels(flat)
    picked = {d: [s for s, c in truth.items() if c == d][:2] for d in range(10)}
    base = tmp_path / "NMNIST"
    for digit, ids in picked.items():
        (base / "Train" / str(digit)).mkdir(parents=True)
        for s in ids:
            shutil.copy(flat / f"{s}.bs2", base / "Train" / str(digit) / f"{int(s):05d}.bin")

    # Tonic finds its folder by class name, so the subclass keeps the name NMNIST
    ref_cls = type("NMNIST", (tonic.datasets.NMNIST,), {"_check_exists": lambda self: True})
    ref = ref_cls(str(tmp_path), train=True)
    ours = NMNIST(tmp_path, train=True)
    assert ours.layout == "tonic" and len(ours) == len(ref) == 20
    assert ours.targets == ref.targets
    for i in range(len(ours)):
        ev, label = ours[i]
        rev, rlabel = ref[i]
        assert label == rlabel
        np.testing.assert_array_equal(ev["t"], rev["t"])
        np.testing.assert_array_equal(ev["x"], rev["x"])
    # the root may also be the NMNIST folder itself
    assert len(NMNIST(base, train=True)) == 20


def test_missing_data_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"Train/<digit>/\*\.bin.*labels\.txt"):
        NMNIST(tmp_path)
    (tmp_path / "labels.txt").write_text("#sample #class\n1\t3\n")
    with pytest.raises(MissingDataError, match=r"1\.bin nor 1\.bs2"):
        NMNIST(tmp_path)
    (tmp_path / "labels.txt").write_text("#sample #class\n1\tseven\n")
    with pytest.raises(ValueError, match="line 2"):
        NMNIST(tmp_path)


def test_stratified_split_invariants() -> None:
    targets = [c for c in range(5) for _ in range(7 + c)]
    tr, te = stratified_split(targets, 0.25, seed=3)
    assert sorted(tr + te) == list(range(len(targets)))
    for c in range(5):
        n = targets.count(c)
        assert sum(targets[i] == c for i in te) == round(n * 0.25)
    assert stratified_split(targets, 0.25, seed=3) == (tr, te)
    with pytest.raises(ValueError):
        stratified_split(targets, 1.0, 0)
