"""`spikestream stream`: a live source through the spiking transformer, one bin at a time."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spikestream.pipeline import ENGINES, LoadedCheckpoint
from spikestream.pipeline.recipe import StreamBinning
from spikestream.pipeline.streaming import Sink, StreamPolicy, StreamResult


@dataclass
class Prepared:
    """A checkpoint and a source made ready to stream: the step to run, the recipe, how the
    stream is binned (and why), and the policy."""

    ck: LoadedCheckpoint
    step: Any  # what make_step built: init_state(1), step(frame, state), mode
    source: Any  # an EventSource
    binning: StreamBinning
    policy: StreamPolicy
    warnings: list[str]


def make_source(spec: str, *, speed: float | None, seed: int, duration_s: float | None = None):
    """The event source for a `--source` spec; `file:PATH` goes through our readers."""
    from spikestream.datasets import iter_events
    from spikestream.devices import SimulatedCamera, source_from_spec

    if spec.startswith("sim") and duration_s is not None:
        rest = spec.partition(":")[2]
        seq = [g.strip() for g in rest.split(",") if g.strip()] or None
        labels = [int(g) if g.isdigit() else g for g in seq] if seq else None
        return SimulatedCamera.gestures(labels, duration_s=duration_s, speed=speed, seed=seed)
    return source_from_spec(spec, speed=speed, seed=seed, open_file=iter_events)


def prepare(checkpoint: str, source_spec: str, *, speed: float | None, realtime: bool,
            bin_ms: float | None, engine: str, threads: int, queue_size: int,
            threshold: float, seconds: float | None, seed: int,
            duration_s: float | None = None, offload: str | None = None) -> Prepared:
    """Load the checkpoint, open the source and decide how to bin it and how bins move.

    `speed`: None when not given, 0 for as fast as inference takes the events, else a pace
    factor. A recorded file (`file:PATH`) replays unpaced and lossless unless `realtime` (or a
    `speed`) paces it; a per-sample recipe (n equal bins) bins it exactly as training binned
    a sample. Live and simulated sources are paced and bin by the recipe's live equivalent.
    `bin_ms` replaces the recipe's binning by a fixed window."""
    import torch

    from spikestream.datasets import read_events
    from spikestream.devices import ReplayCamera
    from spikestream.pipeline import load_for_inference, make_step

    ck = load_for_inference(checkpoint)
    trained = ck.recipe.describe()
    if bin_ms is not None:
        if not bin_ms > 0:
            raise ValueError(f"--bin-ms must be positive, got {bin_ms}")
        ck.recipe = ck.recipe.with_time_window(int(round(bin_ms * 1000)))
    if offload:
        from spikestream.firmware_bridge.offload import offload as offload_to

        offload_to(ck.model, offload)
        engine = "eager"
    kind, _, rest = source_spec.partition(":")
    given = None if speed is None else (None if speed == 0 else float(speed))
    if kind.strip().lower() == "file" and rest:
        recording = read_events(Path(rest))
        pace = given if speed is not None else (1.0 if realtime else None)
        source: Any = ReplayCamera(recording, speed=pace)
        binning = ck.recipe.binning_for(recording.events)
    else:
        pace = given if speed is not None else 1.0
        source = make_source(source_spec, speed=pace, seed=seed, duration_s=duration_s)
        binning = ck.recipe.live_binning()
    if bin_ms is not None:
        binning = replace(binning, description=f"time window {bin_ms:g} ms (--bin-ms; the "
                                                f"checkpoint was trained on {trained})")
    notes = []
    mismatch = ck.recipe.sensor_mismatch(source.sensor_size)
    if mismatch:
        notes.append(mismatch)
    model = ck.model
    step = make_step(model, torch.zeros(1, model.in_channels, *model.input_size), engine)
    policy = StreamPolicy(queue="block" if pace is None else "drop_oldest",
                          queue_size=queue_size, threshold=threshold, max_seconds=seconds,
                          threads=threads)
    return Prepared(ck, step, source, binning, policy, notes)


def udp_address(spec: str) -> tuple[str, int]:
    """`udp:[HOST:]PORT` -> (host, port), host 127.0.0.1 unless given."""
    kind, _, rest = spec.partition(":")
    host, _, port = rest.rpartition(":")
    if kind != "udp" or not port.isdigit():
        raise ValueError(f"--forward {spec!r}: expected udp:[HOST:]PORT")
    return host or "127.0.0.1", int(port)


def run_with_view(prep: Prepared, *, json_out: bool, record: str | None = None,
                  forward: str | None = None, on_step=None,
                  filter_spec: str | None = None) -> StreamResult:
    """Stream a prepared source, with the live view unless JSON output or no TTY; `record`
    also writes every incoming event to HDF5, `forward` (`udp:[HOST:]PORT`) sends it on as
    UDP datagrams in our packet format; `filter_spec` (`devices.filters.filter_from_spec`)
    drops noise before all of them."""
    from spikestream.pipeline.streaming import run_stream

    with contextlib.ExitStack() as stack:
        src = stack.enter_context(prep.source)
        if filter_spec:
            from spikestream.devices.filters import FilteredSource, filter_from_spec

            src = FilteredSource(src, filter_from_spec(filter_spec, src.sensor_size))
        sinks: list[Sink] = []
        if record:
            from spikestream.datasets import Recorder

            rec = stack.enter_context(Recorder(record, src.sensor_size, metadata={
                "source": type(src).__name__, "checkpoint": str(prep.ck.path)}))
            sinks.append(Sink(on_packet=rec.append))
        if forward:
            from spikestream.devices import UDPSink

            host, port = udp_address(forward)
            udp = stack.enter_context(UDPSink(host, port, src.sensor_size))
            sinks.append(Sink(on_packet=udp.send))
        if not json_out and sys.stderr.isatty():
            from spikestream.cli.stream_view import LiveView

            truth = getattr(src, "label_at", None)  # the simulated camera knows its labels
            view = stack.enter_context(LiveView(prep.ck.classes, prep.binning, truth))
            sinks.append(Sink(on_step=view.update))
        if on_step is not None:
            sinks.append(Sink(on_step=on_step))
        return run_stream(src, prep.step, prep.ck.recipe, binning=prep.binning, sinks=sinks,
                          policy=prep.policy, class_names=prep.ck.classes)


def describe_start(prep: Prepared) -> str:
    """The line printed before a run: checkpoint, binning and why, policy, engine."""
    p = prep.policy
    how = "lossless" if p.queue == "block" else f"drops the oldest of {p.queue_size} when behind"
    return (f"checkpoint {prep.ck.path.name}: {prep.binning.description}; "
            f"{p.queue} ({how}); engine {getattr(prep.step, 'mode', 'eager')}, "
            f"{p.threads} thread(s)")


def print_summary(result: StreamResult) -> None:
    early = result.early_decision
    print(f"steps {result.steps}  events {result.events}  drops {result.drops}  "
          f"p50 {result.p50_ms or 0:.2f} ms  p99 {result.p99_ms or 0:.2f} ms  "
          f"real-time factor {result.realtime_factor or 0:.1f}x")
    print(f"decision: {result.decision_name or result.decision} "
          f"(confidence {result.confidence or 0:.2f})"
          + (f", early decision at step {early.step}" if early else ""))


def run(args: argparse.Namespace) -> int:
    prep = prepare(args.checkpoint, args.source, speed=args.speed, realtime=args.realtime,
                   bin_ms=args.bin_ms, engine=args.engine, threads=args.threads,
                   queue_size=args.queue, threshold=args.threshold, seconds=args.seconds,
                   seed=args.seed, offload=args.offload)
    for note in prep.warnings:
        print(f"spikestream stream: warning: {note}", file=sys.stderr)
    if not args.json:
        print(describe_start(prep))
    if args.seconds is not None:
        # the wall-time limit is the command's: loading the checkpoint and compiling the step
        # took part of it already
        spent = time.monotonic() - getattr(args, "started", time.monotonic())
        prep.policy = replace(prep.policy, max_seconds=max(args.seconds - spent, 0.0))
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    result = run_with_view(prep, json_out=args.json, record=args.record, forward=args.forward,
                           filter_spec=args.filter)
    if args.json:
        obj = result.as_dict()
        obj.update(recipe=prep.ck.recipe.to_dict(), engine=getattr(prep.step, "mode", "eager"),
                   warnings=prep.warnings)
        print(json.dumps(obj, default=str))
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
    p.add_argument("--filter", metavar="SPEC",
                   help="drop noise before binning (and recording): comma-separated "
                        "ba:FILTER_TIME_US[:4|8], refractory:DELTA_US, hot:MAX_RATE_HZ[:LEARN_US]")
    p.add_argument("--forward", metavar="udp:[HOST:]PORT",
                   help="also send the incoming events on as UDP datagrams (our format)")
    p.add_argument("--seconds", type=float,
                   help="stop this many seconds of wall time after the command started "
                        "(loading the checkpoint included)")
    p.add_argument("--speed", type=float, default=None,
                   help="pacing of sim/file sources: 1 real time, 0 as fast as possible "
                        "(default: sim 1; files 0, lossless)")
    p.add_argument("--realtime", action="store_true",
                   help="replay a file at real time, dropping bins when inference falls behind "
                        "(default: as fast as inference takes them, every bin classified)")
    p.add_argument("--bin-ms", type=float,
                   help="fixed bin length instead of the checkpoint's recipe (default: the "
                        "recipe: its time window; for a checkpoint trained on n equal bins "
                        "per sample, a recording of sample size is cut into n equal bins and a "
                        "live stream binned at the training samples' mean bin length)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="confidence for the early decision (default 0.9)")
    p.add_argument("--queue", type=int, default=4, help="bins waiting for inference (default 4)")
    p.add_argument("--offload", metavar="PORT",
                   help="run the lrf_dyn core on a device at PORT (serial port or URL)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated camera")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for inference, set for the run and restored (1)")
    add_engine_flag(p)
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)
