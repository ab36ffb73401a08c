"""`spikestream render IN OUT.{png,gif,mp4}`: events to a picture or a video.

A PNG shows every event of the file (or of `--start`/`--end`) in one frame; a GIF or MP4 plays
the recording at `--speed` times real time at `--fps`. `--overlay CHECKPOINT` writes the
checkpoint's running decision (class, confidence) on each frame, from stepping its model over
the recording binned as it was trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def overlay_texts(checkpoint: str, events: Any, sensor_size: Any, frame_ends: Any) -> list:
    """The running decision of `checkpoint` at each frame end, as `class 97%` texts."""
    from spikestream.pipeline.checkpoint import load_for_inference
    from spikestream.pipeline.decisions import running_decisions

    ck = load_for_inference(checkpoint)
    recipe = ck.recipe
    events = recipe.filter_events(events)
    binning = recipe.binning_for(events)  # as `stream` and `eval` bin this recording
    params = recipe.frame_params()
    if not binning.per_sample:
        for key in (recipe.mode, "start_time", "end_time"):
            params.pop(key, None)
        params.update({"time_window": binning.time_window} if binning.time_window
                      else {"event_count": binning.event_count})
    names = list(ck.classes or [])
    dec = running_decisions(ck.model, events, sensor_size, params)
    texts: list[str | None] = []
    for i in dec.at(frame_ends - 1):
        if i < 0:
            texts.append(None)
            continue
        label = int(dec.label[i])
        name = names[label] if label < len(names) else str(label)
        texts.append(f"{name} {100 * dec.confidence[i]:.0f}%")
    return texts


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from spikestream.datasets import read_events
    from spikestream.devices.render import (
        FrameTiming,
        draw_text,
        frame_us_for,
        iter_rendered,
        upscale,
        write_video,
    )

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".gif", ".mp4"):
        raise ValueError(f"{out}: output must end in .png, .gif or .mp4")
    rec = read_events(args.input, format=args.format)
    events = rec.events
    if args.filter:
        from spikestream.devices.filters import filter_from_spec

        events = filter_from_spec(args.filter, rec.sensor_size)(events)
    t = rec.events["t"]
    t0 = args.start * 1000 + (int(t[0]) if len(t) else 0) if args.start is not None else None
    t1 = None if args.end is None else args.end * 1000 + (int(t[0]) if len(t) else 0)
    if out.suffix.lower() == ".png":
        lo = int(t[0]) if t0 is None and len(t) else int(t0 or 0)
        hi = int(t[-1]) if t1 is None and len(t) else int(t1 or lo)
        timing = FrameTiming(lo, float(hi - lo + 1), 1)
    else:
        timing = FrameTiming.cover(events, frame_us_for(args.fps, args.speed), t0, t1)
    if timing.n > args.max_frames:
        raise ValueError(f"{timing.n} frames exceed --max-frames {args.max_frames}; "
                         "raise it, or use --start/--end or a higher --speed")
    chunks = iter_rendered(events, rec.sensor_size, timing, mode=args.mode,
                           tau_us=None if args.tau_ms is None else args.tau_ms * 1000,
                           saturation=args.saturation)
    scale = args.scale or max(1, 256 // max(1, rec.sensor_size[0]))
    texts = (overlay_texts(args.overlay, rec.events, rec.sensor_size,
                           np.asarray(timing.ends())) if args.overlay else None)

    def frames():
        done = 0
        for chunk in chunks:
            chunk = upscale(chunk, scale)
            if texts is not None:
                chunk = draw_text(chunk, texts[done:done + len(chunk)])
            done += len(chunk)
            yield chunk

    n = write_video(str(out), frames(), args.fps)
    w, h = rec.sensor_size[0] * scale, rec.sensor_size[1] * scale
    print(f"wrote {n} frame(s) of {w}x{h} to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", description=__doc__,
                       help="render events to a PNG, GIF or MP4 (optionally with decisions)")
    p.add_argument("input", help="event file in any supported format")
    p.add_argument("output", help="OUT.png (one frame), OUT.gif or OUT.mp4")
    p.add_argument("--mode", choices=("accumulate", "decay"), default="accumulate",
                   help="counts per frame, or an exponentially decaying trace")
    p.add_argument("--fps", type=float, default=30.0, help="video frames per second")
    p.add_argument("--speed", type=float, default=1.0,
                   help="playback speed (0.1: ten times slower than real time)")
    p.add_argument("--tau-ms", type=float, help="decay time constant (default: one frame)")
    p.add_argument("--saturation", type=float,
                   help="events (or decayed trace) at which a pixel takes the full colour "
                   "(default 1)")
    p.add_argument("--scale", type=int, help="integer enlargement (default: to ~256 px wide)")
    p.add_argument("--start", type=float, help="start, ms after the first event")
    p.add_argument("--end", type=float, help="end, ms after the first event")
    p.add_argument("--max-frames", type=int, default=20_000, help="refuse longer videos")
    p.add_argument("--overlay", metavar="CHECKPOINT",
                   help="write this checkpoint's running decision on the frames")
    p.add_argument("--filter", metavar="SPEC",
                   help="denoise first: comma-separated ba:FILTER_TIME_US[:4|8], "
                   "refractory:DELTA_US, hot:MAX_RATE_HZ[:LEARN_US]")
    p.add_argument("--format", default=None, help="force the input format")
    p.set_defaults(func=run)
