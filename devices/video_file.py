"""Video files as frames for the simulated camera: decoded lazily through imageio's ffmpeg."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .video import to_gray


def video_fps(path: str | Path) -> float:
    """The frame rate a video file declares (error if it declares none)."""
    import imageio.v3 as iio

    fps = iio.immeta(str(path)).get("fps")
    if not fps or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"{path}: the video declares no frame rate; give fps")
    return float(fps)


def video_frames(path: str | Path, *, fps: float | None = None
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(t_us, grey frame in [0, 1])`, frame `i` at `i / fps` (default: the file's
    declared rate), decoding one frame at a time."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file {path}")
    rate = fps if fps is not None else video_fps(path)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {rate}")
    try:
        for i, frame in enumerate(iio.imiter(str(path))):
            yield int(round(i * 1e6 / rate)), to_gray(frame)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable video ({e})") from e
