"""Live incremental inference: source -> `StreamBinner` -> `model.step` -> decisions.

`run_stream(source, model)` reads packets in a capture thread, bins them into frames (one per
time window) and hands the frames to inference through a bounded queue; the calling thread
runs `model.step` one frame at a time on state it owns, and turns the logits into a running
decision.

Queue policy: `"drop_oldest"` (the default, for live sources): when inference falls behind
and the queue is full, the oldest waiting bin is dropped to make room for the newest, so the
model always sees the freshest data and memory stays bounded; every dropped bin is counted
(`StreamResult.drops`). `"block"`: capture waits for room (back-pressure; for recordings,
when every bin must be classified). Bins still queued when a run is stopped early are counted
in `unprocessed`; events the binner could not place (older than its open bin) in
`late_events`.

Decision rule: class probabilities at step t are the softmax of the mean of the logits of the
last `window` steps (`window=None`: of all steps so far), i.e. the temporal mean that
Spikformer-style models are trained on, taken over a sliding window for a stream that never
ends. The running decision is their argmax; the early decision is the first step whose top
probability reaches `threshold`.

Latency: `p50_ms`/`p99_ms` are the compute time of one step (frame to probabilities);
`lag_p50_ms`/`lag_p99_ms` the time from the moment a bin was completed by capture to its
decision (queueing included). Both come from a fixed log-spaced histogram (relative error
below 1%), so memory does not grow with the length of the stream.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from numba import njit

from spikestream.pipeline.binning import StreamBinner

__all__ = [
    "POLICIES",
    "BinQueue",
    "Decider",
    "EarlyDecision",
    "LatencyHistogram",
    "StepInfo",
    "StepModel",
    "StreamResult",
    "run_stream",
]

POLICIES = ("drop_oldest", "block")


class StepModel(Protocol):
    """What the runner needs from a model: explicit state and one timestep at a time."""

    def init_state(self, batch: int) -> Any: ...

    def step(self, frame: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


# -- decisions ---------------------------------------------------------------------------------


@dataclass
class EarlyDecision:
    """The first step at which the top class probability reached the threshold."""

    step: int
    bin_index: int
    t_us: int | None
    label: int
    name: str | None
    confidence: float


@njit(cache=True)
def _decide(ring: np.ndarray, total: np.ndarray, z: np.ndarray, count: int,
            window: int) -> tuple[np.ndarray, int, float]:  # pragma: no cover - compiled
    """`Decider.update`'s arithmetic in one compiled call (a dozen numpy calls on a vector of
    a few classes cost more than the arithmetic): store `z`, mean of the window (or running
    mean when `window` is 0), softmax, argmax."""
    c = z.shape[0]
    mean = np.empty(c)
    if window == 0:
        for k in range(c):
            total[k] += z[k]
            mean[k] = total[k] / count
    else:
        row = (count - 1) % window
        for k in range(c):
            ring[row, k] = z[k]
        n = min(count, window)
        for k in range(c):
            acc = 0.0
            for i in range(n):  # summed afresh each step: no drift over long streams
                acc += ring[i, k]
            mean[k] = acc / n
    top = mean.max()
    probs = np.exp(mean - top)
    probs /= probs.sum()
    label = int(probs.argmax())
    return probs, label, probs[label]


class Decider:
    """Running decision from per-step logits: softmax of the mean over the last `window`
    steps (all steps when `window` is None), argmax, and the early decision."""

    def __init__(
        self,
        num_classes: int,
        *,
        window: int | None = 16,
        threshold: float = 0.9,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.num_classes = int(num_classes)
        self.window = window
        self.threshold = float(threshold)
        self.class_names = list(class_names) if class_names is not None else None
        # the last `window` logits in a ring (row `count % window` is the oldest once full);
        # with no window, a running sum
        self._ring = np.zeros((window or 1, self.num_classes), np.float64)
        self._sum = np.zeros(self.num_classes, np.float64)
        self._count = 0
        self.early: EarlyDecision | None = None
        # compile (or load from the cache) now, not in the first step of a stream
        _decide(np.zeros_like(self._ring), np.zeros_like(self._sum), self._sum, 1, window or 0)

    def name(self, label: int) -> str | None:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return None

    def update(
        self, logits: np.ndarray, step: int = 0, bin_index: int = 0, t_us: int | None = None
    ) -> tuple[np.ndarray, int, float]:
        """Add one step's logits `[C]`; returns `(probabilities, label, confidence)`."""
        z = np.asarray(logits, np.float64).reshape(self.num_classes)
        self._count += 1
        probs, label, conf = _decide(self._ring, self._sum, z, self._count, self.window or 0)
        if self.early is None and conf >= self.threshold:
            self.early = EarlyDecision(step, bin_index, t_us, label, self.name(label), conf)
        return probs, label, conf


# -- latency -----------------------------------------------------------------------------------


class LatencyHistogram:
    """Percentiles of durations in constant memory: log-spaced bins from 1 µs to 1000 s."""

    def __init__(self, lo_s: float = 1e-6, hi_s: float = 1e3, bins_per_decade: int = 300) -> None:
        self._lo = math.log10(lo_s)
        self._per = bins_per_decade
        self._n = int(round((math.log10(hi_s) - self._lo) * bins_per_decade))
        self.counts = np.zeros(self._n + 2, np.int64)  # [under, bins..., over]
        self.total = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        self.total += 1
        self.sum_s += seconds
        self.max_s = max(self.max_s, seconds)
        if seconds <= 0:
            self.counts[0] += 1
            return
        i = int((math.log10(seconds) - self._lo) * self._per)
        self.counts[min(max(i + 1, 0), self._n + 1)] += 1

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (0..100) in ms, at the geometric centre of its bin."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.total))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        if i == 0:
            return 0.0
        if i > self._n:
            return self.max_s * 1e3
        return 10 ** (self._lo + (i - 0.5) / self._per) * 1e3

    @property
    def mean_ms(self) -> float | None:
        return self.sum_s / self.total * 1e3 if self.total else None


# -- the bounded queue -------------------------------------------------------------------------


@dataclass
class _Bin:
    index: int
    t_end_us: int | None
    frame: np.ndarray
    done_at: float


class BinQueue:
    """A bounded FIFO of bins between capture and inference, with the drop/block policy."""

    def __init__(self, maxsize: int, policy: str = "drop_oldest") -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = int(maxsize)
        self.policy = policy
        self._items: deque[_Bin] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stopped = False
        self.drops = 0
        self.rejected = 0  # bins offered after `stop`
        self.max_len = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: _Bin) -> bool:
        """Queue a bin; returns False once the queue is stopped."""
        with self._cond:
            if self.policy == "block":
                while len(self._items) >= self.maxsize and not self._stopped:
                    self._cond.wait()
            if self._stopped:
                self.rejected += 1
                return False
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                self.drops += 1
            self._items.append(item)
            self.max_len = max(self.max_len, len(self._items))
            self._cond.notify_all()
            return True

    def put_many(self, items: Sequence[_Bin]) -> bool:
        """Queue several bins in order (one lock round for the drop policy)."""
        if self.policy == "block" or len(items) <= 1:
            for i, item in enumerate(items):
                if not self.put(item):
                    with self._cond:
                        self.rejected += len(items) - i - 1
                    return False
            return True
        with self._cond:
            if self._stopped:
                self.rejected += len(items)
                return False
            self._items.extend(items)
            excess = len(self._items) - self.maxsize
            for _ in range(max(excess, 0)):
                self._items.popleft()
            self.drops += max(excess, 0)
            self.max_len = max(self.max_len, min(len(self._items), self.maxsize))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> _Bin | None:
        """Next bin; None when the queue is closed and empty, stopped, or on timeout."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._closed and not self._stopped:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if self._stopped or not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def count_drops(self, n: int) -> None:
        """Count `n` bins dropped before they were queued (older than a full queue's worth)."""
        with self._cond:
            self.drops += int(n)

    def close(self) -> None:
        """No more bins will come (the consumer drains what is left)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stop(self) -> int:
        """Stop both sides now; returns the number of bins left unprocessed."""
        with self._cond:
            self._stopped = True
            left = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left


# -- results -----------------------------------------------------------------------------------


@dataclass
class StepInfo:
    """One inference step, as handed to `on_step`."""

    step: int
    bin_index: int
    t_us: int | None  # end of the bin in stream time (time-window bins)
    logits: np.ndarray
    probs: np.ndarray
    label: int
    name: str | None
    confidence: float
    latency_ms: float  # compute time of this step
    lag_ms: float  # from bin completion to decision
    queue_len: int
    drops: int
    events: int


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


def _model_binner(
    model: Any, sensor_size: Sequence[int], time_window_us: int, binary: bool
) -> StreamBinner:
    """A binner whose frames fit the model: its input size and polarity channels."""
    size = getattr(model, "input_size", None)
    channels = getattr(model, "in_channels", None)
    w, h = int(sensor_size[0]), int(sensor_size[1])
    target = None if size is None or tuple(size) == (h, w) else tuple(size)
    return StreamBinner(
        sensor_size,
        time_window=time_window_us,
        binary=binary,
        merge_polarity=channels == 1 and int(sensor_size[2]) == 2,
        target_size=target,
    )


def run_stream(
    source: Iterable[np.ndarray],
    model: StepModel,
    *,
    sensor_size: Sequence[int] | None = None,
    time_window_us: int = 10_000,
    binary: bool = False,
    binner: StreamBinner | None = None,
    queue_size: int = 4,
    policy: str = "drop_oldest",
    window: int | None = 16,
    threshold: float = 0.9,
    class_names: Sequence[str] | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    on_packet: Callable[[np.ndarray], None] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    clock: Callable[[], int | None] | None = None,
    stop: threading.Event | None = None,
    max_decisions: int = 10_000,
    engine: str = "eager",
) -> StreamResult:
    """Stream `source` through `model` one bin at a time; returns the run's summary.

    `source`: any iterable of `EVENT_DTYPE` packets (an `EventSource`, whose `sensor_size` and
    `counters` are used). `model`: anything with `init_state(batch)` and
    `step(frame[1, P, H, W], state) -> (logits[1, C], state)`; an `nn.Module` is put in eval
    mode. Frames come from `binner`, or from a `StreamBinner` of `time_window_us` bins resized
    to the model's `input_size` (and merged to one polarity if `in_channels == 1`).
    `on_packet(packet)` sees every incoming packet in the capture thread (e.g. an HDF5
    recorder's append); `on_step(StepInfo)` every step in the calling thread. `clock()` may
    return the current stream time in µs, to close bins while no events arrive (live
    sources). The run ends with the source, after `max_steps` steps or `max_seconds` of wall
    time, when `stop` is set, or on Ctrl-C (`interrupted`).

    `engine` (for an `nn.Module`): "eager" steps `model.step`; "numba", "torchscript" or
    "auto" step the fast copy `pipeline.compiled.make_step` builds and checks against eager
    `step` (falling back with a warning where it differs); the binner's frames must then
    have the model's shape.
    """
    if sensor_size is None:
        sensor_size = binner.sensor_size if binner is not None else getattr(
            source, "sensor_size", None
        )
        if sensor_size is None:
            raise ValueError("sensor_size is needed for a source without a sensor_size")
    if binner is None:
        binner = _model_binner(model, sensor_size, time_window_us, binary)
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = _model_device(model)
    if engine != "eager" and isinstance(model, torch.nn.Module):
        from spikestream.pipeline.engines import make_step

        channels = getattr(model, "in_channels", None)
        size = getattr(model, "input_size", None)
        if channels is None or size is None:
            raise ValueError(f"engine {engine!r} needs a model with in_channels and input_size")
        model = make_step(model, torch.zeros(1, channels, *size, device=device), engine)
    queue = BinQueue(queue_size, policy)
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
                if on_packet is not None:
                    on_packet(packet)
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

    result = StreamResult(queue_size=queue_size, policy=policy)
    step_hist, lag_hist = LatencyHistogram(), LatencyHistogram()
    state = model.init_state(1)
    thread = threading.Thread(target=capture, name="spikestream-capture", daemon=True)
    start = time.perf_counter()
    thread.start()
    last_label: int | None = None
    last_conf: float | None = None
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
                logits, state = model.step(_frame_tensor(item.frame, device), state)
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
                    if len(result.decisions) < max_decisions:
                        result.decisions.append({
                            "step": result.steps, "bin": item.index, "t_us": item.t_end_us,
                            "label": label, "name": decider.name(label), "confidence": conf,
                        })
                    else:
                        result.decisions_omitted += 1
                    last_label = label
                result.steps += 1
                if on_step is not None:
                    on_step(StepInfo(
                        result.steps - 1, item.index, item.t_end_us, z, probs, label,
                        decider.name(label), conf, (t_done - t_start) * 1e3,
                        (t_done - item.done_at) * 1e3, len(queue), queue.drops,
                        binner.events_in,
                    ))
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
