"""DVSGesture: Tonic's prepared .npy layout (checked against Tonic's own class) and the original
IBM release (AEDAT 3.1 bytes + label CSVs + trial lists), built on disk in their exact formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tonic

from spikestream import EVENT_DTYPE
from spikestream.datasets import DVSGesture, MissingDataError

TRIALS = {"train": ["user01_fluorescent", "user02_led"], "test": ["user24_natural"]}


def _random_npy(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tonic's prepared format: int columns x, y, p, t (ms), time-ordered."""
    t = np.sort(rng.integers(0, 6000, n))
    return np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), t],
                    axis=1).astype(np.int64)


@pytest.fixture()
def tonic_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, folder in (("train", "ibmGestureTrain"), ("test", "ibmGestureTest")):
        for trial in TRIALS[split]:
            d = tmp_path / "DVSGesture" / folder / trial
            d.mkdir(parents=True)
            for cls in range(11):
                np.save(d / f"{cls}.npy", _random_npy(rng, 50 + cls))
    return tmp_path


def test_tonic_layout_matches_tonic(tonic_root: Path) -> None:
    ref_cls = type("DVSGesture", (tonic.datasets.DVSGesture,), {"_check_exists": lambda s: True})
    for train in (True, False):
        ours = DVSGesture(tonic_root, train=train)
        ref = ref_cls(str(tonic_root), train=train)
        assert ours.layout == "tonic"
        assert len(ours) == len(ref) == 11 * len(TRIALS["train" if train else "test"])
        # Tonic's file order within a folder follows the file system; compare by path
        by_path = {p: i for i, p in enumerate(ref.data)}
        for i in range(len(ours)):
            ev, label = ours[i]
            rev, rlabel = ref[by_path[str(ours.files[i])]]
            assert ev.dtype == EVENT_DTYPE and label == rlabel == int(ours.files[i].stem)
            for f in "xytp":
                np.testing.assert_array_equal(ev[f], rev[f].astype(np.int64))
        assert sorted(set(ours.users)) == sorted({int(t[4:6]) for t in
                                                  TRIALS["train" if train else "test"]})
    train = DVSGesture(tonic_root, train=True)
    assert train.users[0] == 1 and train.lighting[0] == "fluorescent"
    assert train.users[-1] == 2 and train.lighting[-1] == "led"
    assert train.targets[:11] == list(range(11))


def test_ten_classes_drop_other(tonic_root: Path) -> None:
    ds = DVSGesture(tonic_root / "DVSGesture", train=True, num_classes=10)
    assert len(ds) == 20 and max(ds.targets) == 9 and len(ds.classes) == 10
    assert "other_gestures" not in ds.classes


# --- the original IBM release --------------------------------------------------------------
def write_aedat31(path: Path, x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray,
                  per_packet: int = 1000) -> None:
    """Write polarity events as cAER AEDAT 3.1: text header, then 28-byte packet headers +
    8-byte events (data word: valid bit 0, polarity bit 1, y bits 2-16, x bits 17-31; int32
    timestamp; eventTSOverflow holds the bits above 31). A special-event packet (type 0) comes
    first, as in the real recordings, and must be skipped."""
    header = (b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
              b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n#!END-HEADER\r\n")
    out = [header]
    special = np.zeros(1, dtype=[("data", "<u4"), ("ts", "<i4")])
    special["data"] = 1
    out.append(_packet_header(0, 8, 0, 1, 1) + special.tobytes())
    for s in range(0, len(t), per_packet):
        sl = slice(s, s + per_packet)
        n = len(t[sl])
        overflow = int(t[sl][0] >> 31)
        rec = np.zeros(n, dtype=[("data", "<u4"), ("ts", "<i4")])
        rec["data"] = 1 | (p[sl].astype(np.uint32) << 1) | (y[sl].astype(np.uint32) << 2) | (
            x[sl].astype(np.uint32) << 17)
        rec["ts"] = (t[sl] & 0x7FFFFFFF).astype(np.int32)
        out.append(_packet_header(1, 8, overflow, n, n) + rec.tobytes())
    path.write_bytes(b"".join(out))


def _packet_header(etype: int, size: int, overflow: int, number: int, valid: int) -> bytes:
    h = np.zeros(1, dtype=[("type", "<i2"), ("source", "<i2"), ("size", "<i4"),
                           ("ts_offset", "<i4"), ("overflow", "<i4"), ("capacity", "<i4"),
                           ("number", "<i4"), ("valid", "<i4")])
    h[0] = (etype, 1, size, 4, overflow, number, number, valid)
    return h.tobytes()


@pytest.fixture()
def ibm_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, list]]]:
    rng = np.random.default_rng(1)
    root = tmp_path / "ibm" / "DvsGesture"
    root.mkdir(parents=True)
    truth = {}
    for trial in TRIALS["train"] + TRIALS["test"]:
        n = 20_000
        t = np.sort(rng.integers(5_000_000, 40_000_000, n)).astype(np.int64)
        x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
        write_aedat31(root / f"{trial}.aedat", x, y, t, p)
        # 11 gestures of 2.5 s each, every 3 s, classes 1..11 in a shuffled order
        classes = rng.permutation(11) + 1
        rows = [(int(c), 6_000_000 + 3_000_000 * k, 8_500_000 + 3_000_000 * k)
                for k, c in enumerate(classes)]
        text = "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{a},{b}\n" for c, a, b in rows)
        (root / f"{trial}_labels.csv").write_text(text)
        truth[trial] = ((x, y, t, p), rows)
    (root / "trials_to_train.txt").write_text("".join(f"{t}.aedat\n" for t in TRIALS["train"]))
    (root / "trials_to_test.txt").write_text("".join(f"{t}.aedat\n" for t in TRIALS["test"]))
    return tmp_path / "ibm", truth


def test_ibm_layout_cut_by_label_times(ibm_root) -> None:
    root, truth = ibm_root
    train = DVSGesture(root, train=True)
    test = DVSGesture(root, train=False)
    assert train.layout == test.layout == "ibm"
    assert len(train) == 22 and len(test) == 11
    k = 0
    for trial in TRIALS["train"]:
        (x, y, t, p), rows = truth[trial]
        for cls, start, end in rows:
            ev, label = train[k]
            assert label == cls - 1
            inside = (t >= start) & (t < end)
            np.testing.assert_array_equal(ev["t"], t[inside] - start)
            np.testing.assert_array_equal(ev["x"], x[inside])
            np.testing.assert_array_equal(ev["y"], y[inside])
            np.testing.assert_array_equal(ev["p"], p[inside])
            assert train.users[k] == int(trial[4:6])
            assert train.lighting[k] == trial.split("_", 1)[1]
            k += 1
    ten = DVSGesture(root, train=True, num_classes=10)
    assert len(ten) == 20 and 10 not in ten.targets
    # cache identities differ per cut interval of the same file
    assert len({train.sample_key(i) for i in range(len(train))}) == len(train)


def test_layout_choice_and_errors(ibm_root, tonic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"ibmGestureTrain.*trials_to_train\.txt"):
        DVSGesture(tmp_path / "empty")
    root, _ = ibm_root
    with pytest.raises(MissingDataError, match="Tonic layout"):
        DVSGesture(root, layout="tonic")
    labels = root / "DvsGesture" / "user02_led_labels.csv"
    labels.unlink()
    with pytest.raises(MissingDataError, match="user02_led_labels.csv"):
        DVSGesture(root, train=True)
    assert len(DVSGesture(root, train=False)) == 11  # the test split does not need user02
    labels.write_text("class,startTime_usec,endTime_usec\n1,900,800\n")
    with pytest.raises(ValueError, match="line 2"):
        DVSGesture(root, train=True)
    with pytest.raises(ValueError, match="num_classes"):
        DVSGesture(tonic_root, num_classes=12)
