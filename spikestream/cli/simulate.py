"""`spikestream simulate IN OUT.h5`: the events a DVS would record from a video or image folder.

IN is an image folder (`images.txt` with `seconds path` lines, `timestamps.txt` with one time
in seconds per line as ESIM and v2e write, or plain images at `--fps`), `frames:DIR`, or a
video file (its declared frame rate, or `--fps`). Events are computed by the simulated camera
(`spikestream.devices.SimulatedCamera`: log intensity, per-pixel threshold mismatch,
refractory period, leak and shot noise) and written to our HDF5 layout, without a model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def simulate_camera(src: str, *, fps: float | None, sensor: Any, params: Any, seed: int) -> Any:
    """The simulated camera for an image folder (`frames:DIR` or a folder) or a video file."""
    from spikestream.devices import SimulatedCamera

    path = Path(src[len("frames:"):] if src.startswith("frames:") else src)
    if path.is_dir():
        return SimulatedCamera.from_folder(path, fps=fps, sensor_size=sensor, params=params,
                                           seed=seed)
    if not path.is_file():
        raise FileNotFoundError(f"no image folder or video file {path}")
    from spikestream.devices.video import to_gray
    from spikestream.devices.video_file import video_frames

    first = next(video_frames(path, fps=fps), None)
    if first is None:
        raise ValueError(f"{path}: the video has no frames")
    if sensor is None:
        h, w = to_gray(first[1]).shape
        sensor = (w, h, 2)

    def frames():
        for t, img in video_frames(path, fps=fps):
            yield t, None, img, False

    return SimulatedCamera(frames, sensor, params=params, seed=seed)


def simulate(src: str, dst: str | Path, *, fps: float | None = None, sensor: Any = None,
             params: Any = None, seed: int = 0) -> tuple[int, tuple[int, int, int]]:
    """Write the simulated events of `src` to `dst` (temporary file, renamed on success);
    returns the event count and the sensor size."""
    from spikestream.datasets import Recorder

    dst = Path(dst)
    if dst.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"{dst}: output must end in .h5 or .hdf5")
    cam = simulate_camera(src, fps=fps, sensor=sensor, params=params, seed=seed)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with cam, Recorder(tmp, cam.sensor_size, flush_every=0, metadata={
                "source": str(src), "simulator": "spikestream.devices.SimulatedCamera",
                "seed": seed, "params": repr(cam.params)}) as rec:
            for packet in cam:
                rec.append(packet)
            n = len(rec)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return n, cam.sensor_size


def parse_sensor(text: str | None) -> Any:
    """`dvs128`, `davis240`, `davis346` or `WxH`."""
    if text is None or not text[0].isdigit():
        return text
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise ValueError(f"sensor {text!r}: use dvs128, davis240, davis346 or WxH")
    return (int(w), int(h), 2)


def run(args: argparse.Namespace) -> int:
    from spikestream.devices import DVSParams

    params = DVSParams(pos_threshold=args.threshold, neg_threshold=args.threshold,
                       refractory_us=args.refractory_us, shot_noise_rate_hz=args.shot_noise_hz,
                       leak_rate_hz=args.leak_hz)
    n, size = simulate(args.input, args.output, fps=args.fps, sensor=parse_sensor(args.sensor),
                       params=params, seed=args.seed)
    print(f"wrote {n} events ({size[0]}x{size[1]}) to {args.output}", file=sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", description=__doc__,
                       help="video or image folder to simulated DVS events (HDF5)")
    p.add_argument("input", help="image folder, frames:DIR, or a video file")
    p.add_argument("output", help="OUT.h5")
    p.add_argument("--fps", type=float, help="frame rate for plain image folders, or to "
                   "override a video's declared rate")
    p.add_argument("--sensor", help="resize to dvs128, davis240, davis346 or WxH "
                   "(default: the frames' size)")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="ON/OFF contrast threshold (log intensity)")
    p.add_argument("--refractory-us", type=int, default=0)
    p.add_argument("--shot-noise-hz", type=float, default=0.0,
                   help="random events per pixel per second")
    p.add_argument("--leak-hz", type=float, default=0.0, help="leak events per pixel per second")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
