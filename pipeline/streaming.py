"""Live incremental inference: source -> `StreamBinner` -> `model.step` -> decisions.

`run_stream(source, step_model, recipe)` reads packets in a capture thread, bins them by the
checkpoint's input recipe and hands the frames to inference through a bounded queue; the
calling thread runs `step_model.step` one frame at a time on state it owns (the caller picks
the engine: a model, or `make_step(model, ...)`), and turns the logits into a running decision.
Everything else about the run is a `StreamPolicy`; recorders, views and UDP forwarding are
`Sink`s.

Queue policy: `"drop_oldest"` (paced and live sources, which do not wait): when inference
falls behind and the queue is full, the oldest waiting bin is dropped to make room for the
newest, so the model always sees the freshest data and memory stays bounded; every dropped bin
is counted (`StreamResult.drops`). `"block"` (recordings replayed as fast as inference takes
them, the default for them): capture waits for room, so every bin is classified and a
recording gives the same decision on every run. Bins still queued when a run is stopped
early are counted in `unprocessed`; events the binner could not place (older than its open
bin) in `late_events`.

Decision rule: class probabilities at step t are the softmax of the mean of the logits of the
last `window` steps (`window=None`: of all steps so far), i.e. the temporal mean that
Spikformer-style models are trained on, taken over a sliding window for a stream that never
ends; a recording binned as one training sample (`StreamBinning.per_sample`) is decided on
the mean of all its steps, as `evaluate` decides. The running decision is their argmax; the
early decision is the first step whose top probability reaches `threshold`.

Latency: `p50_ms`/`p99_ms` are the compute time of one step (frame to probabilities);
`lag_p50_ms`/`lag_p99_ms` the time from the moment a bin was completed by capture to its
decision (queueing included). Both come from a fixed log-spaced histogram (relative error
below 1%), so memory does not grow with the length of the stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from spikestream.pipeline.bin_queue import POLICIES, BinQueue, LatencyHistogram, _Bin
from spikestream.pipeline.binning import StreamBinner
from spikestream.pipeline.decider import Decider, EarlyDecision
from spikestream.pipeline.network.model import SpikingTransformer
from spikestream.pipeline.recipe import InputRecipe, StreamBinning

__all__ = [
    "POLICIES",
    "BinQueue",
    "Decider",
    "EarlyDecision",
    "LatencyHistogram",
    "Sink",
    "StepInfo",
    "StepModel",
    "StreamPolicy",
    "StreamResult",
    "run_stream",
    "stream_binner",
    "torch_threads",
]

class StepModel(Protocol):
    """What the runner needs from a model: explicit state and one timestep at a time."""

    def init_state(self, batch: int) -> Any: ...

    def step(self, frame: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


# -- results -----------------------------------------------------------------------------------


@dataclass
class StepInfo:
    """One inference step, as handed to `on_step`."""

    step: int
    bin_index: int
    t_us: int | None  # end of the bin in stream time (time-window bins)
    logits: np.ndarray  # a copy: an engine may reuse its output buffer
    probs: np.ndarray
    label: int
    name: str | None
    confidence: float
    latency_ms: float  # compute time of this step
    lag_ms: float  # from bin completion to decision
    queue_len: int
    drops: int
    events: int
    frame: np.ndarray | None = None  # the bin as the model saw it, [P, H, W]


@dataclass
class StreamResult:
    """Summary of a run; `as_dict()` is JSON-able (the CLI's `--json` object).

    Every bin the binner completed is accounted for: `bins == steps + drops + unprocessed`.
    """

    steps: int = 0  # bins classified
    events: int = 0  # events received from the source
    drops: int = 0  # bins dropped by the queue policy
    bins: int = 0  # bins completed by the binner
    unprocessed: int = 0  # bins still queued when the run was stopped early
    late_events: int = 0  # events older than the binner's open bin (not binned)
    p50_ms: float | None = None  # step compute time
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    lag_p50_ms: float | None = None  # bin completed -> decision (queueing included)
    lag_p99_ms: float | None = None
    wall_s: float = 0.0
    compute_s: float = 0.0  # time spent in steps
    stream_s: float | None = None  # stream time classified: steps x bin length
    steps_per_s: float | None = None  # steps / compute_s
    realtime_factor: float | None = None  # stream_s / compute_s (> 1: faster than real time)
    max_queue: int = 0
    queue_size: int = 0
    policy: str = "drop_oldest"
    decision: int | None = None  # running decision after the last step
    decision_name: str | None = None
    confidence: float | None = None
    early_decision: EarlyDecision | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)  # each change of decision
    decisions_omitted: int = 0  # changes beyond `max_decisions`
    interrupted: bool = False  # ended by Ctrl-C
    source: dict[str, Any] = field(default_factory=dict)  # the source's counters
    binning: dict[str, Any] = field(default_factory=dict)  # how the stream was binned

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _frame_tensor(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(frame.astype(np.float32, copy=False)[None])
    return t if device.type == "cpu" else t.to(device)


def _logits_array(logits: torch.Tensor) -> np.ndarray:
    """`logits[1, C]` as a float array `[C]` (without copies for a CPU float32 tensor)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return logits.detach().numpy().reshape(-1)
    return logits.detach().reshape(-1).float().cpu().numpy()


def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for param in model.parameters():
            return param.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Sink:
    """Where a run's data goes besides the decisions: `on_packet(packet)` sees every incoming
    packet in the capture thread (e.g. `Recorder.append`, `UDPSink.send`), `on_step(StepInfo)`
    every step in the calling thread (e.g. a live view)."""

    on_packet: Callable[[np.ndarray], Any] | None = None
    on_step: Callable[[StepInfo], Any] | None = None


@dataclass(frozen=True)
class StreamPolicy:
    """How bins move: `queue` ("block": lossless, capture waits for inference; "drop_oldest":
    a full queue drops its oldest bin, counted) of `queue_size` bins; the decision's `window`
    (steps; None: all) and early-decision `threshold`; the run's limits; and the torch
    intra-op `threads` during the run (set and restored; None leaves them alone): one step of
    one sample is too small to split, and on a busy 2-core machine the default threads made a
    2 ms step take ~400 ms."""

    queue: str = "block"
    queue_size: int = 4
    window: int | None = 16
    threshold: float = 0.9
    max_steps: int | None = None
    max_seconds: float | None = None
    threads: int | None = 1
    max_decisions: int = 10_000

    def __post_init__(self) -> None:
        if self.queue not in POLICIES:
            raise ValueError(f"queue policy must be one of {POLICIES}, got {self.queue!r}")

    @classmethod
    def for_source(cls, source: Any, **overrides: Any) -> StreamPolicy:
        """Lossless for recordings replayed as fast as inference takes them (a source whose
        `speed` is None, or a plain iterable of packets); drop-oldest for paced and live
        sources, which do not wait for inference."""
        paced = hasattr(source, "sensor_size") and getattr(source, "speed", 1.0) is not None
        return cls(**{"queue": "drop_oldest" if paced else "block", **overrides})


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch intra-op threads set to `n` inside the block and restored after (None: unchanged)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stream_binner(recipe: InputRecipe, binning: StreamBinning,
                  sensor_size: Sequence[int] | None = None,
                  in_channels: int | None = None) -> StreamBinner:
    """The binner for `binning` of a recipe: frames of the recipe's frame size and polarity
    handling from a source of `sensor_size` (default the recipe's)."""
    sensor = tuple(int(v) for v in (sensor_size or recipe.sensor_size))
    w, h = sensor[0], sensor[1]
    frame = tuple(recipe.frame_size)
    return StreamBinner(
        sensor,
        time_window=binning.time_window,
        event_count=binning.event_count,
        t0=binning.t0,
        binary=recipe.binary,
        merge_polarity=(recipe.merge_polarity or in_channels == 1) and sensor[2] == 2,
        target_size=None if frame == (h, w) else frame,
    )


def run_stream(
    source: Iterable[np.ndarray],
    step_model: StepModel,
    recipe: InputRecipe | StreamBinner,
    *,
    binning: StreamBinning | None = None,
    sinks: Sequence[Sink] = (),
    policy: StreamPolicy | None = None,
    class_names: Sequence[str] | None = None,
    clock: Callable[[], int | None] | None = None,
    stop: threading.Event | None = None,
) -> StreamResult:
    """Stream `source` through `step_model` one bin at a time; returns the run's summary.

    `source`: any iterable of `EVENT_DTYPE` packets (an `EventSource`, whose `sensor_size` and
    `counters` are used). `step_model`: anything with `init_state(batch)` and
    `step(frame[1, P, H, W], state) -> (logits[1, C], state)`: a model (put in eval mode) or
    the fast step `make_step` builds; the caller picks the engine. `recipe`: the checkpoint's
    `InputRecipe` (frames binned as it says: by `binning`, default `recipe.live_binning()`;
    for a whole recording pass `binning=recipe.binning_for(events)`, which bins it exactly as
    training binned a sample), or an explicit `StreamBinner`. `policy`: by default
    `StreamPolicy.for_source(source)` (lossless for unpaced replays, drop-oldest for paced
    and live sources; one torch thread, set and restored around the run).
    `clock()` may return the current stream time in µs, to close bins while no events arrive
    (live sources). The run ends with the source, after `policy.max_steps` steps or
    `policy.max_seconds` of wall time, when `stop` is set, or on Ctrl-C (`interrupted`).
    """
    policy = policy or StreamPolicy.for_source(source)
    if isinstance(recipe, StreamBinner):
        binner = recipe
        max_steps = policy.max_steps
        binning_info: dict[str, Any] = {}
    else:
        binning = binning or recipe.live_binning()
        binner = stream_binner(recipe, binning, getattr(source, "sensor_size", None),
                               getattr(step_model, "in_channels", None))
        limits = [m for m in (policy.max_steps, binning.max_steps) if m is not None]
        max_steps = min(limits) if limits else None
        binning_info = binning.as_dict()
        if binning.per_sample:
            policy = replace(policy, window=None)
    filter_packet = recipe.filter_events if isinstance(recipe, InputRecipe) else None
    with torch_threads(policy.threads):
        result = _run(source, step_model, binner, policy, max_steps, sinks, class_names, clock,
                      stop, filter_packet)
    result.binning = binning_info
    return result


def _run(source: Iterable[np.ndarray], model: StepModel, binner: StreamBinner,
         policy: StreamPolicy, max_steps: int | None, sinks: Sequence[Sink],
         class_names: Sequence[str] | None, clock: Callable[[], int | None] | None,
         stop: threading.Event | None,
         filter_packet: Callable[[np.ndarray], np.ndarray] | None) -> StreamResult:
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = _model_device(model)
    window, threshold = policy.window, policy.threshold
    packet_sinks = [s.on_packet for s in sinks if s.on_packet is not None]
    step_sinks = [s.on_step for s in sinks if s.on_step is not None]
    queue = BinQueue(policy.queue_size, policy.queue)
    halt = threading.Event()  # ends both threads; `stop` is the caller's, only read

    def stopping() -> bool:
        return halt.is_set() or (stop is not None and stop.is_set())
    errors: list[BaseException] = []
    num_classes = getattr(model, "num_classes", None)
    decider: Decider | None = None
    if num_classes is not None:
        decider = Decider(num_classes, window=window, threshold=threshold,
                          class_names=class_names)

    def bin_end(index: int) -> int | None:
        if binner.time_window is None or binner.t0 is None:
            return None
        return binner.t0 + (index + 1) * binner.time_window

    def capture() -> None:
        index = 0

        def emit(frames: list[np.ndarray]) -> bool:
            nonlocal index
            if not frames:
                return True
            now = time.perf_counter()
            # Of a burst longer than the queue, only the newest bins can survive the policy:
            # count the others as dropped without building them.
            skip = len(frames) - queue.maxsize if queue.policy == "drop_oldest" else 0
            if skip > 0:
                queue.count_drops(skip)
                index += skip
                frames = frames[skip:]
            bins = [_Bin(index + j, bin_end(index + j), f, now) for j, f in enumerate(frames)]
            index += len(frames)
            return queue.put_many(bins)

        try:
            for packet in source:
                if stopping():
                    break
                for sink in packet_sinks:
                    sink(packet)
                if filter_packet is not None:
                    packet = filter_packet(packet)
                if not emit(binner.push(packet)):
                    break
                if clock is not None:
                    now_us = clock()
                    if now_us is not None and not emit(binner.advance_to(now_us)):
                        break
            else:
                emit(binner.flush())
        except BaseException as e:  # handed to the calling thread
            errors.append(e)
        finally:
            queue.close()

    result = StreamResult(queue_size=policy.queue_size, policy=policy.queue)
    step_hist, lag_hist = LatencyHistogram(), LatencyHistogram()
    state = model.init_state(1)
    # the runner owns the state and drops each one for the next: a model's own step may
    # update it in place
    step = (partial(model.step, donate=True) if isinstance(model, SpikingTransformer)
            else model.step)
    thread = threading.Thread(target=capture, name="spikestream-capture", daemon=True)
    start = time.perf_counter()
    thread.start()
    last_label: int | None = None
    last_conf: float | None = None
    max_seconds = policy.max_seconds
    try:
        with torch.inference_mode():
            while True:
                if stopping():
                    break
                if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                    break
                item = queue.get(timeout=0.05)
                if item is None:
                    if queue.closed and len(queue) == 0:
                        break
                    continue
                t_start = time.perf_counter()
                logits, state = step(_frame_tensor(item.frame, device), state)
                z = _logits_array(logits)
                if decider is None:
                    decider = Decider(len(z), window=window, threshold=threshold,
                                      class_names=class_names)
                probs, label, conf = decider.update(z, result.steps, item.index, item.t_end_us)
                last_conf = conf
                t_done = time.perf_counter()
                step_hist.add(t_done - t_start)
                lag_hist.add(t_done - item.done_at)
                result.compute_s += t_done - t_start
                if label != last_label:
                    if len(result.decisions) < policy.max_decisions:
                        result.decisions.append({
                            "step": result.steps, "bin": item.index, "t_us": item.t_end_us,
                            "label": label, "name": decider.name(label), "confidence": conf,
                        })
                    else:
                        result.decisions_omitted += 1
                    last_label = label
                result.steps += 1
                if step_sinks:
                    info = StepInfo(
                        result.steps - 1, item.index, item.t_end_us, z.copy(), probs, label,
                        decider.name(label), conf, (t_done - t_start) * 1e3,
                        (t_done - item.done_at) * 1e3, len(queue), queue.drops,
                        binner.events_in, item.frame,
                    )
                    for sink in step_sinks:
                        sink(info)
                if max_steps is not None and result.steps >= max_steps:
                    break
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        halt.set()
        result.unprocessed = queue.stop()
        thread.join(timeout=5.0)
    if errors:
        raise errors[0]
    result.unprocessed += queue.rejected
    result.wall_s = time.perf_counter() - start
    result.events = binner.events_in
    result.late_events = binner.late_events
    result.drops = queue.drops
    result.bins = binner.frames_out
    result.max_queue = queue.max_len
    result.p50_ms, result.p99_ms = step_hist.percentile_ms(50), step_hist.percentile_ms(99)
    result.mean_ms, result.max_ms = step_hist.mean_ms, step_hist.max_s * 1e3
    result.lag_p50_ms, result.lag_p99_ms = lag_hist.percentile_ms(50), lag_hist.percentile_ms(99)
    if result.compute_s > 0:
        result.steps_per_s = result.steps / result.compute_s
    if binner.time_window is not None:
        result.stream_s = result.steps * binner.time_window * 1e-6
        if result.compute_s > 0:
            result.realtime_factor = result.stream_s / result.compute_s
    if decider is not None and result.steps:
        result.decision = last_label
        result.decision_name = decider.name(last_label) if last_label is not None else None
        result.confidence = last_conf
        result.early_decision = decider.early
    counters = getattr(source, "counters", None)
    if counters is not None:
        result.source = counters.as_dict() if hasattr(counters, "as_dict") else dict(counters)
    return result
