"""Tonic datasets through spikestream, and our events through every Tonic transform.

The dataset test builds POKERDVS in the on-disk layout Tonic's class reads
(`<root>/POKERDVS/pips_train/<class code>/*.npy`, arrays of (t, x, y, p) rows, with the
archive beside it) and runs the real `tonic.datasets.POKERDVS` through the adapter, binning and
a training epoch."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import tonic
import tonic.transforms as T
import torch

from spikestream import EVENT_DTYPE, make_events
from spikestream.datasets.download import MissingDataError
from spikestream.datasets.tonic_adapter import (
    TONIC_EVENT_DTYPE,
    create_tonic_dataset,
    from_tonic_events,
    tonic_dataset,
    tonic_events,
)
from spikestream.pipeline.binning import to_frames

CODES = ["cl", "he", "di", "sp"]  # POKERDVS's class folders, in its label order


def build_pokerdvs(root: Path, per_class: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = root / "POKERDVS"
    (base / "pips_train.tar.gz").parent.mkdir(parents=True)
    (base / "pips_train.tar.gz").write_bytes(b"")  # Tonic only checks that it is there
    written = {}
    for code in CODES:
        (base / "pips_train" / code).mkdir(parents=True)
        for k in range(per_class):
            n = int(rng.integers(200, 600))
            t = np.sort(rng.integers(0, 40_000, n))
            rows = np.stack([t, rng.integers(0, 35, n), rng.integers(0, 35, n),
                             rng.choice([-1, 1], n)], axis=1).astype(np.int64)
            path = base / "pips_train" / code / f"{code}{k:02d}.npy"
            np.save(path, rows)
            written[str(path)] = rows
    return written


def test_pokerdvs_through_the_adapter_binning_and_training(tmp_path: Path) -> None:
    written = build_pokerdvs(tmp_path)
    ds = tonic_dataset("pokerdvs", tmp_path, train=True)
    theirs = tonic.datasets.POKERDVS(str(tmp_path), train=True)
    assert len(ds) == len(theirs) == 24
    assert ds.sensor_size == (35, 35, 2) and ds.classes == CODES
    for i in range(24):  # each label is the class folder of the file that sample came from
        path = next(p for p, r in written.items() if np.array_equal(r, theirs.data[i]))
        assert ds.targets[i] == CODES.index(Path(path).parent.name)
    for i in (0, 7, 23):
        ev, label = ds[i]
        assert ev.dtype == EVENT_DTYPE and label == theirs[i][1]
        rows = next(r for r in written.values() if np.array_equal(r, theirs.data[i]))
        np.testing.assert_array_equal(ev["t"], rows[:, 0])
        np.testing.assert_array_equal(ev["x"], rows[:, 1])
        np.testing.assert_array_equal(ev["y"], rows[:, 2])
        np.testing.assert_array_equal(ev["p"], rows[:, 3] > 0)
        assert ds.sample_key(i) == ds.sample_key(i) != ds.sample_key((i + 1) % 24)

    # binning and one epoch of training, with no loader of our own
    from spikestream.datasets.cache import FrameDataset
    from spikestream.pipeline import create_model
    from spikestream.pipeline.training import TrainConfig, fit

    frames = FrameDataset(ds, to_frames, {"n_time_bins": 4, "target_size": (32, 32)},
                          cache_dir=tmp_path / "cache")
    x, y = frames[5]
    assert tuple(x.shape) == (4, 2, 32, 32) and y == ds.targets[5]
    want = T.ToFrame(sensor_size=(35, 35, 2), n_time_bins=4)(ds.load(5))
    assert float(x.sum()) == float(want.sum())  # pooling to 32x32 keeps every event
    model = create_model("tiny", attention="ssa", input_size=(32, 32), num_classes=4,
                         stem_pool=(True, True, False))
    result = fit(model, frames, frames, TrainConfig(epochs=1, batch_size=8, device="cpu"),
                 tmp_path / "run", progress=False, log=None)
    assert len(result.history) == 1 and all(np.isfinite(v) for v in result.history[0].values()
                                            if isinstance(v, float))


def test_missing_dataset_is_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="NMNIST"):
        create_tonic_dataset("NMNIST", tmp_path, train=False)
    with pytest.raises(ValueError, match="has no dataset"):
        tonic_dataset("NoSuchSet", tmp_path)


def our_events(n: int = 3_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(rng.integers(0, 40, n), rng.integers(0, 30, n),
                       np.sort(rng.integers(0, 1_000_000, n)), rng.integers(0, 2, n))


def test_voxel_grid_cause_and_conversion() -> None:
    ev = our_events()
    before = ev.copy()
    with pytest.raises(OverflowError, match="-1 out of bounds for uint8"):
        T.ToVoxelGrid(sensor_size=(40, 30, 2), n_time_bins=5)(ev)  # tonic writes -1 into p
    ev = before.copy()
    conv = tonic_events(ev)
    assert conv.dtype == TONIC_EVENT_DTYPE
    grid = T.ToVoxelGrid(sensor_size=(40, 30, 2), n_time_bins=5)(conv)
    np.testing.assert_array_equal(ev, before)  # our array is untouched
    # the event volume of Zhu et al. computed directly: bilinear in time, polarity +-1
    ts = 5 * (ev["t"] - ev["t"][0]) / (ev["t"][-1] - ev["t"][0])
    want = np.zeros((5, 30, 40))
    pol = np.where(ev["p"] == 1, 1.0, -1.0)
    for tt, x, y, p in zip(ts, ev["x"], ev["y"], pol, strict=True):
        i = int(tt)
        if i < 5:
            want[i, y, x] += p * (1 - (tt - i))
        if i + 1 < 5:
            want[i + 1, y, x] += p * (tt - i)
    np.testing.assert_allclose(grid[:, 0], want, atol=1e-9)
    np.testing.assert_array_equal(from_tonic_events(tonic_events(ev)), ev)


S = (40, 30, 2)
TRANSFORMS = {
    "CenterCrop": lambda: T.CenterCrop(S, 20),
    "CropTime": lambda: T.CropTime(100_000, 500_000),
    "Decimation": lambda: T.Decimation(3),
    "Denoise": lambda: T.Denoise(1_000),
    "DropEvent": lambda: T.DropEvent(0.3),
    "DropEventByTime": lambda: T.DropEventByTime(0.2),
    "DropEventByArea": lambda: T.DropEventByArea(S, 0.2),
    "DropPixel": lambda: T.DropPixel(coordinates=[(1, 1), (2, 3)]),
    "Downsample": lambda: T.Downsample(spatial_factor=0.5),
    "EventDrop": lambda: T.EventDrop(S),
    "EventDownsampling": lambda: T.EventDownsampling(S, (20, 15), "integrator",
                                                     noise_threshold=2, dt=0.05),
    "MergePolarities": lambda: T.MergePolarities(),
    "RandomCrop": lambda: T.RandomCrop(S, (20, 20)),
    "RandomDropPixel": lambda: T.RandomDropPixel(0.2, S),
    "RandomFlipPolarity": lambda: T.RandomFlipPolarity(1.0),
    "RandomFlipLR": lambda: T.RandomFlipLR(S, 1.0),
    "RandomFlipUD": lambda: T.RandomFlipUD(S, 1.0),
    "RandomTimeReversal": lambda: T.RandomTimeReversal(1.0),
    "RefractoryPeriod": lambda: T.RefractoryPeriod(1_000),
    "SpatialJitter": lambda: T.SpatialJitter(S, clip_outliers=True),
    "TimeAlignment": lambda: T.TimeAlignment(),
    "TimeJitter": lambda: T.TimeJitter(100, sort_timestamps=True),
    "TimeSkew": lambda: T.TimeSkew(1.1, 5),
    "UniformNoise": lambda: T.UniformNoise(S, 100),
    "NumpyAsType": lambda: T.NumpyAsType(int),
    "ToAveragedTimesurface": lambda: T.ToAveragedTimesurface(S, time_window=1e4, tau=1e3),
    "ToFrame": lambda: T.ToFrame(S, time_window=100_000),
    "ToSparseTensor": lambda: T.ToSparseTensor(S, time_window=100_000),
    "ToImage": lambda: T.ToImage(S),
    "ToTimesurface": lambda: T.ToTimesurface(S, dt=100_000, tau=30_000),
    "ToVoxelGrid": lambda: T.ToVoxelGrid(S, 5),
    "ToBinaRep": lambda: T.Compose([T.ToFrame(S, n_time_bins=8),
                                    T.ToBinaRep(n_frames=2, n_bits=4)]),
    "Repeat": lambda: T.Repeat(2),
    "ToOneHotEncoding": None,  # acts on labels, not events
    "Compose": lambda: T.Compose([T.Denoise(1_000), T.ToFrame(S, n_time_bins=4)]),
}


def test_every_tonic_transform_is_covered() -> None:
    classes = {n for n, c in vars(T).items() if inspect.isclass(c) and c.__module__ == T.__name__
               and (dataclasses.is_dataclass(c) or n == "Compose")}
    assert classes <= set(TRANSFORMS), f"not tested: {sorted(classes - set(TRANSFORMS))}"


@pytest.mark.parametrize("name", sorted(k for k, v in TRANSFORMS.items() if v is not None))
def test_tonic_transform_takes_our_events(name: str) -> None:
    np.random.seed(0)
    ev = our_events()
    before = ev.copy()
    out = TRANSFORMS[name]()(tonic_events(ev))
    np.testing.assert_array_equal(ev, before)
    if isinstance(out, np.ndarray) and out.dtype.names:  # events again: back to our dtype
        for rows in out.reshape(-1, out.shape[-1]):  # Repeat stacks copies
            back = from_tonic_events(rows)
            assert back.dtype == EVENT_DTYPE and np.all(np.diff(back["t"]) >= 0)
    else:
        assert isinstance(out, (np.ndarray, torch.Tensor)) and np.prod(out.shape) > 0
    if name == "RandomFlipPolarity":
        np.testing.assert_array_equal(out["p"], 1 - ev["p"])
    if name == "ToFrame":
        np.testing.assert_array_equal(out, to_frames(ev, S, time_window=100_000))
    if name not in ("ToVoxelGrid",):  # the unsigned contract works as it is for all others
        np.random.seed(0)
        TRANSFORMS[name]()(ev.copy())


def test_registry_builds_tonic_datasets_by_name(tmp_path: Path) -> None:
    from spikestream.datasets.registry import create_dataset

    build_pokerdvs(tmp_path)
    ds = create_dataset("tonic:POKERDVS", tmp_path, part="train")
    direct = tonic_dataset("POKERDVS", tmp_path, train=True)
    assert len(ds) == len(direct) == 24 and ds.sensor_size == direct.sensor_size
    ev, label = ds[3]
    want, want_label = direct[3]
    np.testing.assert_array_equal(ev, want)
    assert label == want_label
    with pytest.raises(ValueError, match="tonic:NAME"):
        create_dataset("pokerdvs", tmp_path)
