"""The streaming runner: same decisions as offline inference for any packet split, counted
drops and bounded memory when inference falls behind, decisions, latency and sinks."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spikestream import make_events
from spikestream.pipeline.binning import StreamBinner, to_frames
from spikestream.pipeline.network.neurons import LIF
from spikestream.pipeline.recipe import InputRecipe
from spikestream.pipeline.streaming import (
    BinQueue,
    Decider,
    LatencyHistogram,
    Sink,
    StreamPolicy,
    run_stream,
)

W, H = 16, 12


class LIFClassifier(nn.Module):
    """A small stateful model: linear -> LIF -> linear readout, with explicit state."""

    def __init__(self, p: int = 2, h: int = H, w: int = W, hidden: int = 32, classes: int = 5,
                 delay_s: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.input_size, self.in_channels, self.num_classes = (h, w), p, classes
        self.fc = nn.Linear(p * h * w, hidden)
        self.lif = LIF(tau=2.0, v_th=0.5)
        self.out = nn.Linear(hidden, classes)
        self.delay_s = delay_s

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        return {"v": self.lif.init_state((batch, self.fc.out_features))}

    def step(self, frame: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self.delay_s:
            time.sleep(self.delay_s)  # a deliberately slow model
        s, v = self.lif.step(self.fc(frame.flatten(1)), state["v"])
        return self.out(s), {"v": v}

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        spikes = self.lif(self.fc(frames.flatten(2)))
        return self.out(spikes)


def random_events(seed: int, n: int, span: int, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span + 1, n))
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n))


def moving_bar_events(size: int, duration_us: int, seed: int = 3) -> np.ndarray:
    """A vertical bar sweeping across the sensor (ON at its leading edge, OFF at its trailing
    edge), plus 10% uniform noise events."""
    rng = np.random.default_rng(seed)
    n = duration_us // 20
    t = np.sort(rng.integers(0, duration_us, n))
    edge = (t * 3 * size // duration_us) % size
    on = rng.random(n) < 0.5
    x = np.where(on, edge, (edge - 4) % size)
    noise = rng.random(n) < 0.1
    x = np.where(noise, rng.integers(0, size, n), x)
    y = rng.integers(0, size, n)
    return make_events(x, y, t, on)


def offline_logits(model: nn.Module, ev: np.ndarray, sensor, window_us: int, **kw) -> np.ndarray:
    frames = to_frames(ev, sensor, time_window=window_us, include_incomplete=True,
                       end_time=int(ev["t"][-1]) + 1, **kw)
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(frames.astype(np.float32))[:, None])[:, 0].numpy()


def windows(window_us: int, sensor=(W, H, 2), frame=(H, W)) -> InputRecipe:
    """The recipe of fixed time windows from `sensor` into frames of `frame` (H, W)."""
    return InputRecipe.from_binning({"time_window": window_us}, sensor, frame)


def collect(source, model, recipe, **kw):
    steps = []
    result = run_stream(source, model, recipe, sinks=[Sink(on_step=steps.append)], **kw)
    return result, steps


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), sizes=st.lists(st.integers(1, 400), min_size=1, max_size=40))
def test_any_packet_split_gives_offline_logits(seed, sizes):
    ev = random_events(seed, 3000, 200_000)
    model = LIFClassifier(seed=seed % 7)
    cuts = np.cumsum(sizes)
    packets = np.split(ev, cuts[cuts < len(ev)])
    result, steps = collect(packets, model, windows(7000),
                            policy=StreamPolicy(queue="block", window=4))
    ref = offline_logits(model, ev, (W, H, 2), 7000)
    assert result.steps == len(ref) == len(steps) and result.drops == 0
    np.testing.assert_allclose(np.stack([s.logits for s in steps]), ref, atol=1e-5)
    decider = Decider(5, window=4)
    assert [s.label for s in steps] == [decider.update(z)[1] for z in ref]
    assert result.events == len(ev)


def test_replay_camera_any_packet_size_matches_offline_forward_of_the_model() -> None:
    devices = pytest.importorskip("spikestream.devices")
    from spikestream.pipeline import create_model

    ev = moving_bar_events(128, 250_000)
    model = create_model("tiny", num_classes=11).eval()  # 64x64 input: 2x2 sum pooling
    ref = offline_logits(model, ev, (128, 128, 2), 10_000, target_size=(64, 64))
    ref_labels = [Decider(11, window=8).update(z)[1] for z in ref]
    for packets in (dict(packet_events=7), dict(packet_events=977), dict(packet_us=3000),
                    dict(packet_us=10**6)):
        cam = devices.ReplayCamera(ev, (128, 128, 2), speed=None, **packets)
        result, steps = collect(cam, model, windows(10_000, (128, 128, 2), (64, 64)),
                                policy=StreamPolicy(queue="block", window=8))
        assert result.steps == len(ref) and result.drops == 0, packets
        np.testing.assert_allclose(np.stack([s.logits for s in steps]), ref, atol=1e-4)
        assert [s.label for s in steps] == ref_labels, packets
        assert result.source["events"] == len(ev) == result.events


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_slow_model_drops_oldest_bins_counted_and_memory_stays_bounded() -> None:
    """An hour of stream time (360,000 bins of 10 ms) from a fast source into a slow model."""
    packet_us, n_packets, per_packet = 10**6, 3600, 40
    template = random_events(0, per_packet, packet_us - 1)
    rss: list[int] = []

    def source():
        for i in range(n_packets):
            packet = template.copy()
            packet["t"] += i * packet_us
            yield packet
            if i in (360, n_packets - 1):  # after 6 minutes and at the end
                rss.append(rss_bytes())

    model = LIFClassifier(delay_s=0.002)
    result = run_stream(source(), model, windows(10_000),
                        policy=StreamPolicy(queue="drop_oldest", queue_size=16))
    t_first, t_last = int(template["t"][0]), int(template["t"][-1]) + (n_packets - 1) * packet_us
    n_bins = (t_last - t_first) // 10_000 + 1
    assert result.bins == n_bins
    assert result.drops > 0.9 * n_bins  # the model keeps up with a few per cent at most
    assert result.steps + result.drops + result.unprocessed == n_bins  # nothing silently lost
    assert result.max_queue <= 16
    assert result.events == n_packets * per_packet
    # a queue that kept every bin would hold > 300 MB here (360,000 frames of 768 B + arrays)
    assert rss[-1] - rss[0] < 30 * 2**20, rss


def test_block_policy_classifies_every_bin() -> None:
    ev = random_events(1, 2000, 500_000)
    result = run_stream([ev], LIFClassifier(delay_s=0.001), windows(10_000),
                        policy=StreamPolicy(queue="block", queue_size=2))
    n_bins = (int(ev["t"][-1]) - int(ev["t"][0])) // 10_000 + 1
    assert result.drops == 0 and result.steps == result.bins == n_bins
    assert result.max_queue <= 2


def test_decider_window_mean_softmax_and_early_decision() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 4)) + np.linspace(0, 10, 60)[:, None] * np.eye(4)[2]
    for window in (1, 5, None):
        d = Decider(4, window=window, threshold=0.8, class_names=list("abcd"))
        first = None
        for t, z in enumerate(logits):
            probs, label, conf = d.update(z, step=t)
            lo = 0 if window is None else max(0, t + 1 - window)
            mean = logits[lo : t + 1].mean(axis=0)
            ref = np.exp(mean) / np.exp(mean).sum()
            np.testing.assert_allclose(probs, ref, rtol=1e-12)
            assert label == int(ref.argmax()) and conf == pytest.approx(ref.max())
            if first is None and ref.max() >= 0.8:
                first = (t, int(ref.argmax()))
        assert first is not None
        assert (d.early.step, d.early.label) == first and d.early.name == "abcd"[first[1]]


def test_latency_histogram_percentiles() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=-6, sigma=1.0, size=20_000)
    hist = LatencyHistogram()
    for s in samples:
        hist.add(float(s))
    for q in (50, 99):
        exact = np.percentile(samples, q, method="inverted_cdf") * 1e3
        assert math.isclose(hist.percentile_ms(q), exact, rel_tol=0.01)
    assert hist.mean_ms == pytest.approx(samples.mean() * 1e3)


def test_bin_queue_drops_oldest_first() -> None:
    from spikestream.pipeline.streaming import _Bin

    q = BinQueue(3)
    for i in range(7):
        q.put(_Bin(i, None, np.zeros(1), 0.0))
    assert q.drops == 4 and [q.get(0).index for _ in range(3)] == [4, 5, 6]
    q.close()
    assert q.get(0) is None


def test_summary_early_decision_sink_and_max_steps(tmp_path: Path) -> None:
    hdf5 = pytest.importorskip("spikestream.datasets.hdf5")
    from spikestream.datasets import read_events

    ev = random_events(2, 5000, 300_000)
    packets = np.array_split(ev, 13)
    model = LIFClassifier()
    ref = offline_logits(model, ev, (W, H, 2), 10_000)
    probe = Decider(5, window=16)
    confs = np.sort([probe.update(z)[2] for z in ref])
    # a threshold reached mid-stream, far from every confidence (logits agree to 1e-5 only)
    k = len(confs) // 4 + int(np.argmax(np.diff(confs[len(confs) // 4 : 3 * len(confs) // 4])))
    threshold = float(confs[k] + confs[k + 1]) / 2
    with hdf5.Recorder(tmp_path / "rec.h5", (W, H, 2)) as rec:
        result = run_stream(packets, model, windows(10_000),
                            policy=StreamPolicy(queue="block", threshold=threshold),
                            sinks=[Sink(on_packet=rec.append)], class_names=list("vwxyz"))
    back = read_events(tmp_path / "rec.h5")
    np.testing.assert_array_equal(back.events, ev)
    summary = result.as_dict()
    for key in ("steps", "events", "drops", "p50_ms", "p99_ms", "decisions"):
        assert key in summary
    assert summary["steps"] == len(ref) and summary["events"] == 5000
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    d = Decider(5, window=16, threshold=threshold)
    labels = [d.update(z, step=i)[1] for i, z in enumerate(ref)]
    assert result.decision == labels[-1] and result.decision_name == "vwxyz"[labels[-1]]
    assert result.early_decision is not None and result.early_decision.step == d.early.step
    changes = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    assert [c["step"] for c in summary["decisions"]] == changes

    short = run_stream(packets, model, windows(10_000),
                       policy=StreamPolicy(queue="block", max_steps=5))
    assert short.steps == 5 and short.drops == 0
    assert short.bins == short.steps + short.unprocessed  # the rest is counted, not lost
    assert short.bins > 5


def test_clock_closes_bins_while_no_events_arrive() -> None:
    now = {"t": 0}

    def quiet_source():
        yield make_events([1], [1], [0], [1])
        for i in range(1, 11):  # a silent second: empty packets while the clock moves on
            now["t"] = i * 100_000
            yield make_events([], [], [], [])

    result, steps = collect(quiet_source(), LIFClassifier(), windows(10_000),
                            policy=StreamPolicy(queue="block"), clock=lambda: now["t"])
    assert result.steps == 100 and [s.t_us for s in steps] == [10_000 * (i + 1) for i in range(100)]


def test_source_errors_reach_the_caller() -> None:
    def broken():
        yield random_events(3, 10, 1000)
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="unplugged"):
        run_stream(broken(), LIFClassifier(), windows(10_000))


def test_binner_from_model_resizes_and_merges_polarity() -> None:
    model = LIFClassifier(p=1, h=6, w=8)
    ev = random_events(4, 1000, 100_000)
    result, steps = collect([ev], model, windows(10_000, frame=(6, 8)),
                            policy=StreamPolicy(queue="block"))
    ref = offline_logits(model, ev, (W, H, 2), 10_000, target_size=(6, 8), merge_polarity=True)
    np.testing.assert_allclose(np.stack([s.logits for s in steps]), ref, atol=1e-5)
    explicit = StreamBinner((W, H, 2), time_window=10_000, target_size=(6, 8),
                            merge_polarity=True, binary=True)
    assert run_stream([ev], model, explicit, policy=StreamPolicy(queue="block")).steps == len(ref)


def test_stop_event_ends_an_endless_source() -> None:
    import itertools
    import threading

    def endless():
        for i in itertools.count():
            yield random_events(i, 50, 9_999) if i == 0 else make_events(
                [1], [1], [i * 10_000], [0])

    stop = threading.Event()

    def on_step(info) -> None:
        if info.step == 2:
            stop.set()

    result = run_stream(endless(), LIFClassifier(), windows(10_000),
                        sinks=[Sink(on_step=on_step)], stop=stop,
                        policy=StreamPolicy(queue="block"))
    assert result.steps == 3 and not result.interrupted
    assert result.bins == result.steps + result.drops + result.unprocessed
