"""The frames-to-events pixel model against its equations, and on real DAVIS240C frames."""

from __future__ import annotations

import numpy as np
import pytest

from spikestream import validate_events
from spikestream.devices import SENSORS, DVSEmulator, DVSParams, SimulatedCamera, lin_log
from spikestream.devices.video import image_sequence, resize_frame, to_gray

QUIET = dict(sigma_threshold=0.0, refractory_us=0, leak_rate_hz=0.0, shot_noise_rate_hz=0.0)


def _uniform(level: float, w: int = 16, h: int = 12) -> np.ndarray:
    return np.full((h, w), level)


def test_sensor_sizes_are_real_sensors():
    assert SENSORS["dvs128"] == (128, 128, 2)
    assert SENSORS["davis240"] == (240, 180, 2)
    assert SENSORS["davis346"] == (346, 260, 2)


def test_lin_log_is_log_above_knee_linear_below_and_monotonic():
    i = np.linspace(0, 1, 2001)
    y = lin_log(i)
    assert np.all(np.diff(y) > 0)
    bright = i > 20 / 255
    assert np.allclose(y[bright], np.log(255 * i[bright]))
    dark = i <= 20 / 255
    assert np.allclose(y[dark], 255 * i[dark] * np.log(20) / 20)


@pytest.mark.parametrize("m", [1, 3, 7])
@pytest.mark.parametrize("direction", [1, -1])
def test_m_threshold_change_gives_m_events_at_interpolated_times(m, direction):
    theta = 0.2
    emu = DVSEmulator((16, 12, 2), DVSParams(pos_threshold=theta, neg_threshold=theta, **QUIET))
    i0 = 0.2 if direction > 0 else 0.9  # both ends above the lin-log knee (20/255)
    i1 = i0 * np.exp(direction * m * theta)
    assert emu.step(_uniform(i0), 1000).size == 0  # the first frame sets the references
    ev = emu.step(_uniform(i1), 1000 + 40_000)
    assert len(ev) == m * 16 * 12
    assert np.all(ev["p"] == (1 if direction > 0 else 0))
    # every pixel: the k-th crossing at t0 + k/m * dt (log intensity linear between frames)
    want = 1000 + np.floor(np.arange(1, m + 1) / m * 40_000 + 1e-6).astype(np.int64)
    for x, y in [(0, 0), (15, 11), (7, 5)]:
        got = ev["t"][(ev["x"] == x) & (ev["y"] == y)]
        assert np.all(np.abs(got - want) <= 1), (got, want)
    validate_events(ev, (16, 12, 2))


def test_reference_is_kept_between_frames():
    """1.5 thresholds twice: one event, then two (the reference sits at the last crossing)."""
    theta = 0.25
    emu = DVSEmulator((8, 8, 2), DVSParams(pos_threshold=theta, neg_threshold=theta, **QUIET))
    i0 = 0.3
    emu.step(_uniform(i0, 8, 8), 0)
    first = emu.step(_uniform(i0 * np.exp(1.5 * theta), 8, 8), 10_000)
    second = emu.step(_uniform(i0 * np.exp(3.0 * theta), 8, 8), 20_000)
    assert len(first) == 64 and len(second) == 128
    # second interval: log goes from 1.5 to 3.0 thresholds; crossings at 2 and 3 thresholds
    t = np.unique(second["t"])
    assert np.allclose(t, [10_000 + 10_000 / 3, 20_000], atol=1)


def test_no_change_no_noise_gives_no_events():
    emu = DVSEmulator((32, 24, 2), seed=3, sigma_threshold=0.05, refractory_us=0)
    rng = np.random.default_rng(0)
    frame = rng.uniform(0, 1, (24, 32))
    total = sum(len(emu.step(frame, t)) for t in range(0, 500_000, 10_000))
    assert total == 0


def test_mismatch_per_pixel_thresholds_set_event_counts():
    sigma, theta = 0.04, 0.2
    emu = DVSEmulator(
        (64, 64, 2),
        seed=11,
        pos_threshold=theta,
        neg_threshold=theta,
        sigma_threshold=sigma,
        refractory_us=0,
    )
    pos, neg = emu.pos_thresholds, emu.neg_thresholds
    n = pos.size
    # Gaussian mismatch: mean and spread as asked, ON and OFF drawn independently
    assert abs(pos.mean() - theta) < 4 * sigma / np.sqrt(n)
    assert abs(pos.std() - sigma) < 0.05 * sigma
    assert abs(neg.std() - sigma) < 0.05 * sigma
    assert abs(np.corrcoef(pos.ravel(), neg.ravel())[0, 1]) < 0.05
    # a uniform rise of D in log intensity gives floor(D / theta_pixel) ON events per pixel
    d = 1.0
    emu.step(_uniform(0.3, 64, 64), 0)
    ev = emu.step(_uniform(0.3 * np.exp(d), 64, 64), 50_000)
    counts = np.zeros((64, 64), int)
    np.add.at(counts, (ev["y"], ev["x"]), 1)
    assert np.array_equal(counts, np.floor(d / pos + 1e-9).astype(int))


def test_refractory_period_drops_crossings_inside_it():
    theta = 0.1
    emu = DVSEmulator(
        (4, 4, 2), pos_threshold=theta, neg_threshold=theta, sigma_threshold=0.0, refractory_us=250
    )
    emu.step(_uniform(0.3, 4, 4), 0)
    ev = emu.step(_uniform(0.3 * np.exp(10 * theta), 4, 4), 1000)
    # crossings every 100 µs; kept: 100, then the first >= 350 (400), 700, 1000
    got = ev["t"][(ev["x"] == 1) & (ev["y"] == 2)]
    assert np.allclose(got, [100, 400, 700, 1000], atol=1)
    assert emu.refractory_dropped == 16 * 6


def test_refractory_holds_for_every_pixel_with_noise():
    refr = 300
    emu = DVSEmulator((32, 32, 2), seed=5, refractory_us=refr, shot_noise_rate_hz=50.0)
    rng = np.random.default_rng(1)
    parts = []
    for k in range(40):
        frame = np.clip(0.5 + 0.4 * np.sin(k / 3 + rng.uniform(0, 6, (32, 32))), 0, 1)
        parts.append(emu.step(frame, k * 2000))
    ev = np.concatenate(parts)
    assert len(ev) > 1000
    order = np.lexsort((ev["t"], ev["y"].astype(int) * 32 + ev["x"]))
    pix = (ev["y"].astype(int) * 32 + ev["x"])[order]
    t = ev["t"][order]
    same = pix[1:] == pix[:-1]
    assert np.all(np.diff(t)[same] >= refr)


def test_shot_noise_rate_and_balance():
    rate, secs = 20.0, 1.0
    emu = DVSEmulator((64, 64, 2), seed=2, shot_noise_rate_hz=rate, refractory_us=0)
    frame = _uniform(0.5, 64, 64)
    ev = np.concatenate([emu.step(frame, t) for t in range(0, int(secs * 1e6) + 1, 10_000)])
    expect = rate * secs * 64 * 64
    assert abs(len(ev) - expect) < 5 * np.sqrt(expect)
    assert abs(ev["p"].mean() - 0.5) < 0.03
    assert np.all(np.diff(ev["t"]) >= 0)


def test_leak_events_are_on_at_the_leak_rate():
    rate, secs = 2.0, 3.0
    emu = DVSEmulator((64, 64, 2), seed=4, leak_rate_hz=rate, sigma_threshold=0.0, refractory_us=0)
    frame = _uniform(0.5, 64, 64)
    ev = np.concatenate([emu.step(frame, t) for t in range(0, int(secs * 1e6) + 1, 20_000)])
    assert np.all(ev["p"] == 1)
    # the reference drifts down by rate * theta per second: rate ON events per pixel per second
    expect = rate * secs * 64 * 64
    assert abs(len(ev) - expect) <= 0.02 * expect
    # random leak phase: the events do not all fire together
    assert len(np.unique(ev["t"])) > 50


def test_seed_makes_it_repeatable():
    frames = [np.random.default_rng(k).uniform(0, 1, (20, 30)) for k in range(6)]
    times = [k * 5000 for k in range(6)]
    kw = dict(refractory_us=100, shot_noise_rate_hz=5.0, leak_rate_hz=1.0)
    a = DVSEmulator((30, 20, 2), seed=9, **kw).convert(frames, times)
    b = DVSEmulator((30, 20, 2), seed=9, **kw).convert(frames, times)
    c = DVSEmulator((30, 20, 2), seed=10, **kw).convert(frames, times)
    assert len(a) > 0 and np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_frames_are_resized_to_the_sensor():
    img = np.tile(np.linspace(0, 1, 240), (180, 1))
    assert resize_frame(img, 240, 180) is img
    small = resize_frame(img, 128, 128)
    assert small.shape == (128, 128) and np.all(np.diff(small[0]) > 0)
    rgb = (np.stack([img] * 3, axis=-1) * 255).astype(np.uint8)
    assert np.allclose(to_gray(rgb), img, atol=1 / 255)
    emu = DVSEmulator("davis346", seed=0)
    emu.step(img, 0)
    ev = emu.step(np.roll(img, 40, axis=1), 10_000)
    validate_events(ev, SENSORS["davis346"])
    assert ev["x"].max() > 240  # the 240-pixel frame fills the 346-pixel array


def test_slider_depth_real_frames(real_data):
    folder = real_data / "frames" / "slider_depth"
    frames = []
    for i, item in enumerate(image_sequence(folder)):
        frames.append(item)
        if i == 14:
            break
    assert frames[0][1].shape == (180, 240)
    times = [t for t, _ in frames]
    assert times[0] == 0 and np.all(np.diff(times) > 0)
    cam = SimulatedCamera.from_frames(
        [f for _, f in frames], times, params=DVSParams(refractory_us=100), seed=0
    )
    assert cam.sensor_size == SENSORS["davis240"]
    with cam:
        ev = cam.events()
    validate_events(ev, (240, 180, 2))
    assert len(ev) == cam.counters.events
    assert cam.counters.packets == len(frames)
    on = ev["p"].mean()
    assert 0.35 < on < 0.65, on  # a camera sliding past a static scene: ON and OFF balance
    # the scene moves everywhere: most pixels fire, over the whole time span
    assert len(np.unique(ev["y"].astype(int) * 240 + ev["x"])) > 0.5 * 240 * 180
    assert ev["t"][0] > 0 and ev["t"][-1] <= times[-1]
