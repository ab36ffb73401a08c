"""Binned-frame cache: keyed by dataset, sample and binning parameters; never stale."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from spikestream.datasets import NMNIST, FrameCache, FrameDataset
from spikestream.datasets.cache import frame_key
from spikestream.pipeline.binning import to_frames


@pytest.fixture()
def small(real_data: Path, tmp_path: Path) -> Path:
    """A flat N-MNIST folder of 6 real samples (a copy, so a test may change a file)."""
    src = real_data / "nmnist-small" / "train"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    dst = tmp_path / "data"
    dst.mkdir()
    lines = (src / "labels.txt").read_text().splitlines()[:7]
    (dst / "labels.txt").write_text("\n".join(lines) + "\n")
    for ln in lines[1:]:
        sid = ln.split()[0]
        shutil.copy(src / f"{sid}.bs2", dst / f"{sid}.bs2")
    return dst


def test_frames_equal_binner_and_hit_on_second_access(small: Path, tmp_path: Path) -> None:
    ds = NMNIST(small, test_fraction=0.0)
    params = {"n_time_bins": 5, "target_size": (16, 16)}
    fd = FrameDataset(ds, to_frames, params, cache_dir=tmp_path / "cache")
    for i in range(len(ds)):
        x, y = fd[i]
        want = to_frames(ds.load(i), (34, 34, 2), n_time_bins=5, target_size=(16, 16))
        np.testing.assert_array_equal(x.numpy(), want)
        assert x.shape == (5, 2, 16, 16) and y == ds.targets[i]
    assert fd.misses == len(ds) and fd.hits == 0
    again = FrameDataset(ds, to_frames, params, cache_dir=tmp_path / "cache")
    for i in range(len(ds)):
        np.testing.assert_array_equal(again[i][0].numpy(), fd[i][0].numpy())
    assert again.hits == len(ds) and again.misses == 0


def test_key_changes_with_params_sample_and_binner(small: Path) -> None:
    ds = NMNIST(small, test_fraction=0.0)
    k = frame_key(ds, 0, to_frames, {"n_time_bins": 5})
    assert k == frame_key(ds, 0, to_frames, {"n_time_bins": 5})
    assert k != frame_key(ds, 1, to_frames, {"n_time_bins": 5})
    assert k != frame_key(ds, 0, to_frames, {"n_time_bins": 6})
    assert k != frame_key(ds, 0, to_frames, {"n_time_bins": 5, "binary": True})
    assert k != frame_key(ds, 0, partial(to_frames, dtype=np.float32), {"n_time_bins": 5})


def test_changed_recording_is_rebinned(small: Path, tmp_path: Path) -> None:
    """Tonic's DiskCachedDataset keys by index and would serve the old frames here."""
    ds = NMNIST(small, test_fraction=0.0)
    params = {"n_time_bins": 4}
    cache = tmp_path / "cache"
    before = FrameDataset(ds, to_frames, params, cache_dir=cache)[0][0]
    f = ds.files[0]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 10 * 5])  # a shorter recording (whole 5-byte records)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fd = FrameDataset(NMNIST(small, test_fraction=0.0), to_frames, params, cache_dir=cache)
    after = fd[0][0]
    assert fd.misses == 1
    assert after.sum() < before.sum()
    np.testing.assert_array_equal(
        after.numpy(), to_frames(fd.dataset.load(0), (34, 34, 2), n_time_bins=4))


def test_torn_cache_file_is_recomputed(small: Path, tmp_path: Path) -> None:
    ds = NMNIST(small, test_fraction=0.0)
    fd = FrameDataset(ds, to_frames, {"n_time_bins": 3}, cache_dir=tmp_path / "c")
    good = fd[0][0]
    key = frame_key(ds, 0, to_frames, {"n_time_bins": 3})
    FrameCache(tmp_path / "c").path(key).write_bytes(b"\x93NUMPY garbage")
    fd2 = FrameDataset(ds, to_frames, {"n_time_bins": 3}, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(fd2[0][0].numpy(), good.numpy())
    assert fd2.misses == 1


def test_augment_runs_after_the_cache_and_can_be_switched_off(small: Path) -> None:
    ds = NMNIST(small, test_fraction=0.0)
    flip = FrameDataset(ds, to_frames, {"n_time_bins": 3}, in_memory=True,
                        augment=lambda x: x.flip(-1))
    plain = flip.without_augment()
    assert torch.equal(flip[2][0], plain[2][0].flip(-1))
    assert plain.memory is flip.memory and flip.augment is not None
    np.testing.assert_array_equal(plain[2][0].numpy(),
                                  to_frames(ds.load(2), (34, 34, 2), n_time_bins=3))
