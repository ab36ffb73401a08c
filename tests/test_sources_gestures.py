"""Procedural DVS128 Gesture scenes and the simulated camera that performs them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spikestream import validate_events
from spikestream.devices import GESTURE_CLASSES, SimulatedCamera, gesture_clip, gesture_label

SIZE = (48, 48, 2)


def test_classes_are_dvs128_gestures_in_tonic_order():
    tonic = pytest.importorskip("tonic")
    assert list(GESTURE_CLASSES) == list(tonic.datasets.DVSGesture.classes)
    assert gesture_label("right arm ccw") == 4
    assert gesture_label("Air guitar") == 9
    assert gesture_label(10) == 10
    with pytest.raises(ValueError):
        gesture_label("juggling")
    with pytest.raises(ValueError):
        gesture_label(11)


def test_clip_is_valid_and_repeatable():
    a = gesture_clip(0, duration_s=0.5, sensor_size=SIZE, seed=7, fps=200)
    b = gesture_clip(0, duration_s=0.5, sensor_size=SIZE, seed=7, fps=200)
    c = gesture_clip(0, duration_s=0.5, sensor_size=SIZE, seed=8, fps=200)
    validate_events(a, SIZE)
    assert len(a) > 500
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0 < a["t"][0] and a["t"][-1] <= 500_000


def _circulation(ev: np.ndarray, bin_us: int = 20_000) -> float:
    """Total turning (rad) of the event centroid about its mean; > 0 is clockwise (y down)."""
    nb = int(ev["t"][-1] // bin_us) + 1
    b = ev["t"] // bin_us
    cnt = np.bincount(b, minlength=nb)
    cx = np.bincount(b, ev["x"].astype(float), minlength=nb)
    cy = np.bincount(b, ev["y"].astype(float), minlength=nb)
    ok = cnt > 0.3 * cnt.mean()
    cx, cy = cx[ok] / cnt[ok], cy[ok] / cnt[ok]
    ang = np.arctan2(cy - cy.mean(), cx - cx.mean())
    return float(np.sum(np.angle(np.exp(1j * np.diff(ang)))))


@pytest.mark.parametrize("cw,ccw", [(3, 4), (5, 6)])
def test_arm_rotation_direction_is_visible_in_the_events(cw, ccw):
    for seed in (1, 2):
        turn_cw = _circulation(gesture_clip(cw, 1.4, SIZE, seed=seed, fps=160))
        turn_ccw = _circulation(gesture_clip(ccw, 1.4, SIZE, seed=seed, fps=160))
        # about one turn per second at random speed: clearly positive vs clearly negative
        assert turn_cw > 3.0 and turn_ccw < -3.0, (turn_cw, turn_ccw)


def test_right_and_left_are_mirrored_on_the_image():
    """The subject faces the camera: the right hand waves on the image's left half."""
    for seed in (3, 4):
        right = gesture_clip(1, 0.8, SIZE, seed=seed, fps=160)
        left = gesture_clip(2, 0.8, SIZE, seed=seed, fps=160)
        assert right["x"].mean() < SIZE[0] / 2 < left["x"].mean()


def test_camera_performs_a_labelled_sequence():
    seq = ["Hand clapping", "Left arm cw", "Air drums"]
    cam = SimulatedCamera.gestures(seq, duration_s=0.3, sensor_size=SIZE, fps=200, seed=5)
    assert [s[2] for s in cam.segments] == [0, 5, 8]
    assert cam.segments[0][:2] == (0, 300_000) and cam.segments[-1][1] == 900_000
    seen = []
    parts = []
    with cam:
        for packet in cam:
            parts.append(packet)
            seen.append((cam.t_us, cam.label))
            if len(packet):
                assert packet["t"][-1] <= cam.t_us
    ev = np.concatenate(parts)
    validate_events(ev, SIZE)
    assert cam.counters.events == len(ev) and cam.counters.malformed == 0
    for t, lab in seen:
        assert lab == cam.label_at(t), (t, lab)
    assert {lab for _, lab in seen} == {0, 5, 8}
    # the same seed gives the same stream
    again = SimulatedCamera.gestures(seq, duration_s=0.3, sensor_size=SIZE, fps=200, seed=5)
    assert np.array_equal(again.events(), ev)


def test_real_time_pacing_and_as_fast_as_possible():
    kw = dict(duration_s=0.25, sensor_size=(32, 32, 2), fps=100, seed=0)
    t0 = time.perf_counter()
    SimulatedCamera.gestures([7], speed=1.0, **kw).events()
    paced = time.perf_counter() - t0
    t0 = time.perf_counter()
    SimulatedCamera.gestures([7], speed=None, **kw).events()
    fast = time.perf_counter() - t0
    assert paced >= 0.24
    assert fast < paced


@pytest.mark.slow
def test_a_classifier_learns_the_eleven_gestures():
    """Clips of new people (unseen seeds) are told apart by a linear read-out of motion features.

    Features: where events happen (coarse activity map), which way activity flows between
    neighbouring cells (antisymmetric lag-1 correlation: direction of rotation), and the
    spectrum of the event rate (frequency of the motion).
    """
    grid, bin_us, dur = 8, 20_000, 1.0
    size = (64, 64, 2)

    def features(ev: np.ndarray) -> np.ndarray:
        nb = int(dur * 1e6) // bin_us
        a = np.zeros((nb, grid, grid))
        np.add.at(
            a,
            (
                np.minimum(ev["t"] // bin_us, nb - 1),
                ev["y"].astype(int) * grid // 64,
                ev["x"].astype(int) * grid // 64,
            ),
            1.0,
        )
        a /= max(a.sum(), 1.0) / nb
        fx = (a[:-1, :, :-1] * a[1:, :, 1:] - a[:-1, :, 1:] * a[1:, :, :-1]).mean(0)
        fy = (a[:-1, :-1, :] * a[1:, 1:, :] - a[:-1, 1:, :] * a[1:, :-1, :]).mean(0)
        rate = a.sum((1, 2))
        spec = np.abs(np.fft.rfft(rate - rate.mean()))[:12]
        return np.concatenate(
            [np.sqrt(a.mean(0)).ravel(), 5 * fx.ravel(), 5 * fy.ravel(), spec / (spec.sum() + 1e-9)]
        )

    n_train, n_test = 8, 4
    x, y, train = [], [], []
    for label in range(11):
        for s in range(n_train + n_test):
            ev = gesture_clip(label, dur, size, seed=10_000 + 100 * label + s, fps=200)
            x.append(features(ev))
            y.append(label)
            train.append(s < n_train)
    x, y, train = np.array(x), np.array(y), np.array(train)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mu) / sd
    onehot = np.eye(11)[y]
    a = z[train]
    w = np.linalg.solve(a.T @ a + 10 * np.eye(a.shape[1]), a.T @ onehot[train])
    acc = float(((z[~train] @ w).argmax(1) == y[~train]).mean())
    assert acc >= 0.6, acc  # chance is 1/11
