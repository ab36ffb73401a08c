"""`spikestream stream`: a live source through the spiking transformer, one bin at a time."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikestream.pipeline.engines import ENGINES
from spikestream.pipeline.streaming import StepInfo, StreamResult


@dataclass
class StreamModel:
    """A checkpoint ready to stream: the model and the binning it was trained with."""

    model: Any
    name: str
    time_window_us: int
    binary: bool
    class_names: list[str] | None


def set_threads(n: int) -> None:
    """Torch intra-op threads for streaming. One step of one sample is too small to split:
    on 2 cores with the capture thread busy, 2 threads made a 2 ms step take ~400 ms."""
    import torch

    torch.set_num_threads(max(1, n))


def load_stream_model(path_or_name: str, bin_ms: float | None = None) -> StreamModel:
    """Load a checkpoint (path or shipped name) with the bin length it was trained on.

    Checkpoints trained on time-window bins carry their window in `meta.binning`; for others
    (event-count or fixed-count bins) the bin length must be given (`bin_ms`, default 10 ms).
    """
    from spikestream.pipeline.checkpoint import load_checkpoint
    from spikestream.pipeline.evaluation import resolve_checkpoint

    path = resolve_checkpoint(path_or_name)
    model, extra = load_checkpoint(path)
    meta = extra.get("meta", {})
    binning = meta.get("binning", {})
    if bin_ms is not None:
        window = int(round(bin_ms * 1000))
    elif binning.get("time_window"):
        window = int(binning["time_window"])
    else:
        window = 10_000
    if window <= 0:
        raise ValueError(f"bin length must be positive, got {window} µs")
    classes = meta.get("classes")
    return StreamModel(model, str(path_or_name), window, bool(binning.get("binary", False)),
                       list(classes) if classes else None)


def make_source(spec: str, *, speed: float | None, seed: int, duration_s: float | None = None):
    """The event source for a `--source` spec; `file:PATH` goes through our readers."""
    from spikestream.datasets import read_events
    from spikestream.devices import SimulatedCamera, source_from_spec

    if spec.startswith("sim") and duration_s is not None:
        rest = spec.partition(":")[2]
        seq = [g.strip() for g in rest.split(",") if g.strip()] or None
        labels = [int(g) if g.isdigit() else g for g in seq] if seq else None
        return SimulatedCamera.gestures(labels, duration_s=duration_s, speed=speed, seed=seed)
    return source_from_spec(spec, speed=speed, seed=seed, read_recording=read_events)


class LiveView:
    """A rich live view: class probabilities, event rate, step latency and drops."""

    def __init__(self, class_names: list[str] | None, every: int = 1) -> None:
        from rich.console import Console
        from rich.live import Live

        self.names = class_names
        self.every = max(1, every)
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self._last_events = 0
        self._last_t: int | None = None

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def update(self, info: StepInfo) -> None:
        from rich.table import Table

        rate = None
        if info.t_us is not None and self._last_t is not None and info.t_us > self._last_t:
            rate = (info.events - self._last_events) / ((info.t_us - self._last_t) * 1e-6)
        self._last_events, self._last_t = info.events, info.t_us
        if info.step % self.every:
            return
        table = Table(title=f"step {info.step}  decision: {info.name or info.label} "
                      f"({info.confidence:.0%})", expand=False)
        table.add_column("class")
        table.add_column("p", justify="right")
        table.add_column("")
        for i, p in enumerate(info.probs):
            name = self.names[i] if self.names and i < len(self.names) else str(i)
            table.add_row(name, f"{p:.2f}", "█" * int(round(float(p) * 30)))
        rate_s = f"{rate / 1e3:.1f} kev/s" if rate is not None else "-"
        table.caption = (f"events {info.events}  rate {rate_s}  step {info.latency_ms:.2f} ms  "
                         f"lag {info.lag_ms:.1f} ms  queue {info.queue_len}  drops {info.drops}")
        self.live.update(table)


def run_with_view(source: Any, sm: StreamModel, *, json_out: bool, record: str | None,
                  seconds: float | None, threshold: float, queue_size: int,
                  policy: str = "drop_oldest", on_step=None,
                  engine: str = "eager") -> StreamResult:
    """Stream `source` through `sm.model`, with the live view unless JSON output or no TTY.

    `policy="drop_oldest"` for live or paced sources (inference keeps up or drops, counted);
    `"block"` for a source replayed as fast as possible, where every bin must be classified.
    `engine`: how steps run (`pipeline.compiled.ENGINES`; fast engines are checked against
    eager steps when built).
    """
    from spikestream.pipeline.streaming import run_stream

    with contextlib.ExitStack() as stack:
        src = stack.enter_context(source) if hasattr(source, "__enter__") else source
        on_packet = None
        if record:
            from spikestream.datasets import Recorder

            rec = stack.enter_context(Recorder(record, src.sensor_size, metadata={
                "source": type(src).__name__, "checkpoint": sm.name}))
            on_packet = rec.append
        view = None
        if not json_out and sys.stderr.isatty():
            view = stack.enter_context(LiveView(sm.class_names))

        def step_cb(info: StepInfo) -> None:
            if view is not None:
                view.update(info)
            if on_step is not None:
                on_step(info)

        return run_stream(src, sm.model, time_window_us=sm.time_window_us, binary=sm.binary,
                          queue_size=queue_size, policy=policy, threshold=threshold,
                          class_names=sm.class_names, max_seconds=seconds,
                          on_packet=on_packet, on_step=step_cb, engine=engine)


def print_summary(result: StreamResult) -> None:
    early = result.early_decision
    print(f"steps {result.steps}  events {result.events}  drops {result.drops}  "
          f"p50 {result.p50_ms or 0:.2f} ms  p99 {result.p99_ms or 0:.2f} ms  "
          f"real-time factor {result.realtime_factor or 0:.1f}x")
    print(f"decision: {result.decision_name or result.decision} "
          f"(confidence {result.confidence or 0:.2f})"
          + (f", early decision at step {early.step}" if early else ""))


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    sm = load_stream_model(args.checkpoint, args.bin_ms)
    if args.offload:
        from spikestream.firmware_bridge.offload import offload

        offload(sm.model, args.offload)
    speed = None if args.speed == 0 else args.speed
    source = make_source(args.source, speed=speed, seed=args.seed)
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    result = run_with_view(source, sm, json_out=args.json, record=args.record,
                           seconds=args.seconds, threshold=args.threshold,
                           queue_size=args.queue,
                           policy="block" if speed is None else "drop_oldest",
                           engine="eager" if args.offload else args.engine)
    if args.json:
        print(json.dumps(result.as_dict(), default=str))
    else:
        print_summary(result)
    return 130 if result.interrupted else 0


def add_engine_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="how steps run: numba (event-driven kernels, ssa/sdsa models), "
                        "torchscript (a frozen trace), eager (model.step), or auto: numba "
                        "where supported, else torchscript; fast engines are checked against "
                        "eager steps when built and fall back if they differ; eager with "
                        "--offload (default: auto)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="classify a live or replayed event stream step by step",
                       description=__doc__)
    p.add_argument("--source", default="sim",
                   help="sim | sim:LABELS | frames:DIR | file:PATH | udp:[HOST:]PORT | "
                        "aestream:[HOST:]PORT | inivation[:SERIAL] (default: sim)")
    p.add_argument("--checkpoint", default="gestures",
                   help="checkpoint path or shipped name (default: gestures)")
    p.add_argument("--record", metavar="OUT.h5", help="also record the incoming events to HDF5")
    p.add_argument("--seconds", type=float, help="stop after this many seconds of wall time")
    p.add_argument("--speed", type=float, default=1.0,
                   help="pacing of sim/file sources: 1 real time, 0 as fast as possible")
    p.add_argument("--bin-ms", type=float, help="bin length (default: the checkpoint's)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="confidence for the early decision (default 0.9)")
    p.add_argument("--queue", type=int, default=4, help="bins waiting for inference (default 4)")
    p.add_argument("--offload", metavar="PORT",
                   help="run the lrf_dyn core on a device at PORT (serial port or URL)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated camera")
    p.add_argument("--threads", type=int, default=1, help="torch threads for inference (1)")
    add_engine_flag(p)
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)
