"""`spikestream simulate`: image folders (UZH `images.txt`, ESIM/v2e `timestamps.txt`, plain at
`--fps`) and video files to HDF5 events, equal to the simulated camera run directly."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from spikestream.cli import main
from spikestream.datasets import read_events
from spikestream.devices import DVSParams, SimulatedCamera


def moving_bar(n: int = 12, w: int = 48, h: int = 32) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        img = np.full((h, w), 40, np.uint8)
        img[:, 3 * i + 2: 3 * i + 8] = 220
        frames.append(img)
    return frames


def camera_events(cam: SimulatedCamera) -> np.ndarray:
    with cam:
        return np.concatenate(list(cam))


def test_real_frames_with_images_txt(real_data: Path, tmp_path: Path) -> None:
    src = real_data / "frames" / "slider_depth"
    lines = (src / "images.txt").read_text().splitlines()[:6]
    folder = tmp_path / "six"
    (folder / "images").mkdir(parents=True)
    for line in lines:  # the first six real frames, linked, with their own timestamps
        rel = line.split()[1]
        (folder / rel).symlink_to(src / rel)
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "six.h5"
    assert main(["simulate", str(folder), str(out)]) == 0
    rec = read_events(out)
    want = camera_events(SimulatedCamera.from_folder(folder, seed=0))
    assert rec.sensor_size == (240, 180, 2)
    np.testing.assert_array_equal(rec.events, want)
    t_last = int(round(float(lines[-1].split()[0]) * 1e6))
    assert len(want) > 1000 and 0 < rec.events["t"][0] and rec.events["t"][-1] <= t_last


def test_esim_timestamps_txt_folder(tmp_path: Path) -> None:
    frames = moving_bar()
    times_s = np.cumsum(np.r_[0, np.full(len(frames) - 1, 0.01)]) + 0.5
    (tmp_path / "seq" / "imgs").mkdir(parents=True)
    for i, f in enumerate(frames):
        iio.imwrite(tmp_path / "seq" / "imgs" / f"{i:08d}.png", f)
    (tmp_path / "seq" / "timestamps.txt").write_text("".join(f"{t:.6f}\n" for t in times_s))
    out = tmp_path / "bar.h5"
    assert main(["simulate", f"frames:{tmp_path / 'seq'}", str(out), "--threshold", "0.3"]) == 0
    rec = read_events(out)
    want = camera_events(SimulatedCamera.from_frames(
        [f.astype(np.float32) / 255 for f in frames], [int(round(t * 1e6)) for t in times_s],
        params=DVSParams(pos_threshold=0.3, neg_threshold=0.3), seed=0))
    np.testing.assert_array_equal(rec.events, want)
    assert rec.sensor_size == (48, 32, 2) and len(want) > 0
    # ON events where the bar arrives, OFF where it leaves
    assert set(np.unique(rec.events["p"])) == {0, 1}


def test_plain_folder_needs_fps_and_video_file(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    frames = moving_bar(10)
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, f in enumerate(frames):
        iio.imwrite(plain / f"f{i:03d}.png", f)
    assert main(["simulate", str(plain), str(tmp_path / "x.h5")]) == 2
    assert "fps" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()
    assert main(["simulate", str(plain), str(tmp_path / "p.h5"), "--fps", "50"]) == 0
    p = read_events(tmp_path / "p.h5")
    assert p.events["t"][-1] <= 9 * 20_000 and len(p) > 0

    video = tmp_path / "bar.mp4"
    rgb = [np.repeat(f[..., None], 3, axis=2) for f in frames]
    iio.imwrite(video, np.stack(rgb), fps=25, codec="libx264", macro_block_size=1)
    out = tmp_path / "v.h5"
    assert main(["simulate", str(video), str(out), "--sensor", "dvs128"]) == 0
    v = read_events(out)
    decoded = iio.imread(video, index=None)
    want = camera_events(SimulatedCamera.from_frames(
        list(decoded), [i * 40_000 for i in range(len(decoded))], sensor_size="dvs128", seed=0))
    np.testing.assert_array_equal(v.events, want)
    assert v.sensor_size == (128, 128, 2) and len(want) > 0
    assert v.events["t"][-1] <= (len(decoded) - 1) * 40_000
