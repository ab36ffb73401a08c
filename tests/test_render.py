"""`spikestream render` and `devices.render`: colours from polarity counts, the decay equation,
frame counts of encoded GIF/MP4 read back with imageio, and the decision overlay."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from spikestream import Recording, make_events
from spikestream.cli import main
from spikestream.datasets import read_events, write_events
from spikestream.devices.render import (
    BACKGROUND,
    OFF_COLOR,
    ON_COLOR,
    FrameTiming,
    accumulate_frames,
    decay_frames,
    render_frames,
)

W, H = 20, 14


def random_events(n: int, seed: int, span_us: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_us, n))
    return make_events(rng.integers(0, W, n), rng.integers(0, H, n), t, rng.integers(0, 2, n))


def expected_rgb(on: np.ndarray, off: np.ndarray, saturation: float) -> np.ndarray:
    a_on = np.minimum(on / saturation, 1)[..., None]
    a_off = np.minimum(off / saturation, 1)[..., None]
    bg = np.array(BACKGROUND, float)
    rgb = bg + a_on * (np.array(ON_COLOR) - bg) + a_off * (np.array(OFF_COLOR) - bg)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_png_pixels_are_the_polarity_counts(tmp_path: Path) -> None:
    ev = random_events(600, 0)
    src = tmp_path / "ev.h5"
    write_events(src, Recording(ev, (W, H, 2)))
    out = tmp_path / "all.png"
    assert main(["render", str(src), str(out), "--saturation", "5", "--scale", "1"]) == 0
    img = iio.imread(out)
    on = np.zeros((H, W))
    off = np.zeros((H, W))
    np.add.at(on, (ev["y"][ev["p"] == 1], ev["x"][ev["p"] == 1]), 1)
    np.add.at(off, (ev["y"][ev["p"] == 0], ev["x"][ev["p"] == 0]), 1)
    assert img.shape == (H, W, 3)
    np.testing.assert_array_equal(img, expected_rgb(on, off, 5))
    # a pixel with one ON event and nothing else, at saturation 1, is exactly the ON colour
    single = make_events([3, 7, 9], [2, 5, 5], [0, 10, 20], [1, 0, 1])
    rgb = render_frames(single, (W, H, 2), FrameTiming(0, 100.0, 1))[0]
    assert tuple(rgb[2, 3]) == ON_COLOR and tuple(rgb[5, 7]) == OFF_COLOR
    assert tuple(rgb[0, 0]) == BACKGROUND


def test_accumulate_counts_each_frame() -> None:
    ev = random_events(2_000, 1)
    timing = FrameTiming.cover(ev, 7_000.0)
    counts = accumulate_frames(ev, (W, H, 2), timing)
    assert counts.sum() == len(ev)
    for k in (0, 5, timing.n - 1):
        lo, hi = timing.t_start + k * 7_000, timing.t_start + (k + 1) * 7_000
        sel = ev[(ev["t"] >= lo) & (ev["t"] < hi)]
        ref = np.zeros((2, H, W), int)
        np.add.at(ref, (sel["p"], sel["y"], sel["x"]), 1)
        np.testing.assert_array_equal(counts[k], ref)


def test_decay_is_the_exponential_sum() -> None:
    ev = random_events(1_500, 2)
    tau = 4_000.0
    timing = FrameTiming.cover(ev, 3_000.0)
    got = decay_frames(ev, (W, H, 2), timing, tau)
    for k in range(timing.n):
        end = timing.t_start + (k + 1) * 3_000.0
        sel = ev[ev["t"] < end]
        ref = np.zeros((2, H, W))
        np.add.at(ref, (sel["p"], sel["y"], sel["x"]), np.exp(-(end - sel["t"]) / tau))
        np.testing.assert_allclose(got[k], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ext", ["gif", "mp4"])
def test_video_has_the_expected_frame_count(tmp_path: Path, ext: str) -> None:
    # one event per 10 ms at a moving pixel: every frame differs (a GIF merges equal frames)
    n = 37
    ev = make_events(np.arange(n) % W, (np.arange(n) // W) % H, np.arange(n) * 10_000,
                     np.arange(n) % 2)
    src = tmp_path / "ev.h5"
    write_events(src, Recording(ev, (W, H, 2)))
    out = tmp_path / f"v.{ext}"
    # 25 fps at speed 0.25: 10 ms of events per frame, 37 frames for 0..360 ms
    assert main(["render", str(src), str(out), "--fps", "25", "--speed", "0.25"]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == n
    assert frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0


def test_bad_output_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ev = random_events(10, 3)
    src = tmp_path / "ev.h5"
    write_events(src, Recording(ev, (W, H, 2)))
    assert main(["render", str(src), str(tmp_path / "x.avi")]) == 2
    assert "png, .gif or .mp4" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.h5"]


def test_overlay_is_the_models_running_decision(real_data: Path, tmp_path: Path) -> None:
    from spikestream.cli.render import overlay_texts
    from spikestream.pipeline.checkpoint import load_checkpoint, resolve_checkpoint
    from spikestream.pipeline.decisions import running_decisions

    rec = read_events(real_data / "nmnist-small/train/1.bs2")  # a 5 (labels.txt)
    model, _ = load_checkpoint(resolve_checkpoint("nmnist"))
    params = {"n_time_bins": 8, "target_size": (32, 32)}
    dec = running_decisions(model, rec.events, rec.sensor_size, params)
    from spikestream.pipeline.binning import to_frames

    frames = torch.from_numpy(to_frames(rec.events, rec.sensor_size, dtype=np.float32, **params))
    with torch.no_grad():
        logits = model(frames[:, None])[:, 0]  # forward over all T: the second implementation
    mean = logits.cumsum(0) / torch.arange(1, 9)[:, None]
    np.testing.assert_array_equal(dec.label, mean.argmax(1).numpy())
    np.testing.assert_allclose(dec.confidence, torch.softmax(mean, 1).max(1).values.numpy(),
                               rtol=1e-4)
    assert dec.label[-1] == 5
    assert np.all(np.diff(dec.end_us) >= 0) and dec.end_us[-1] <= rec.events["t"][-1]
    ends = np.array([dec.end_us[0] - 1, dec.end_us[-1] + 1]) + 1
    texts = overlay_texts("nmnist", rec.events, rec.sensor_size, ends)
    assert texts[0] is None and texts[1] == f"5 {100 * dec.confidence[-1]:.0f}%"
    plain, marked = tmp_path / "plain.gif", tmp_path / "marked.gif"
    src = str(real_data / "nmnist-small/train/1.bs2")
    assert main(["render", src, str(plain), "--speed", "0.2"]) == 0
    assert main(["render", src, str(marked), "--speed", "0.2", "--overlay", "nmnist"]) == 0
    a, b = iio.imread(plain, index=None), iio.imread(marked, index=None)
    assert a.shape == b.shape
    assert np.array_equal(a[0], b[0])  # no decision before the first bin ends
    assert not np.array_equal(a[-1, :12], b[-1, :12])  # the text band on the last frame


@pytest.mark.parametrize("mode", ["accumulate", "decay"])
def test_chunked_rendering_equals_one_pass(mode: str) -> None:
    from spikestream.devices.render import iter_rendered

    ev = random_events(4_000, 4)
    timing = FrameTiming.cover(ev, 1_333.3)
    whole = np.concatenate(list(iter_rendered(ev, (W, H, 2), timing, mode=mode, saturation=3,
                                              chunk_frames=10_000)))
    parts = list(iter_rendered(ev, (W, H, 2), timing, mode=mode, saturation=3, chunk_frames=7))
    assert max(len(p) for p in parts) == 7 and len(whole) == timing.n
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    if mode == "accumulate":
        counts = accumulate_frames(ev, (W, H, 2), timing)
        assert counts.sum() == len(ev)
