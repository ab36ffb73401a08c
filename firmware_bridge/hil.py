"""Hardware-in-the-loop conformance: run inputs on a device over a Link and compare every output
timestep with the numpy reference IntCore.

Inputs are the attention core's device input u = k AND v (bool [N, D] per timestep). They come
either from a seeded Bernoulli source or from a real event recording: events are binned into
timesteps and a tokens x channels grid, then k and v are two fixed seeded channel permutations
of that spike map, so u keeps the recording's spatial and temporal structure. A run takes its
inputs as an array or as batches made on demand, so its memory follows the batch, not the
number of timesteps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from spikestream.firmware_bridge.intcore import (
    MAX_DECAY_SHIFT,
    MAX_GAMMA_SHIFT,
    MIN_DECAY_SHIFT,
    CoreParams,
    IntCore,
)
from spikestream.firmware_bridge.link import Link


def random_core_params(
    heads: int = 4, head_dim: int = 16, k: int = 3, n_tokens: int = 64, seed: int = 0
) -> CoreParams:
    """Seeded integer parameters inside the specification's limits, tuned so that neurons fire
    at moderate rates (a conformance run should exercise both spikes and silence)."""
    rng = np.random.default_rng(seed)
    shape = (heads, k)
    lower = rng.integers(-64, 65, size=shape)
    upper = rng.integers(-64, 65, size=shape)
    lower[:, 0] = 0
    upper[:, -1] = 0
    readout = rng.integers(-8, 17, size=shape)
    readout[:, 0] = rng.integers(1, 17, size=heads)
    return CoreParams(
        heads=heads,
        head_dim=head_dim,
        k=k,
        n_tokens=n_tokens,
        decay_shift=rng.integers(MIN_DECAY_SHIFT, min(6, MAX_DECAY_SHIFT) + 1, size=shape),
        lower=lower,
        upper=upper,
        gamma=rng.integers(-32, 128, size=shape),
        gamma_shift=rng.integers(0, min(4, MAX_GAMMA_SHIFT) + 1, size=shape),
        readout=readout,
        theta=rng.integers(256, 4096, size=heads),
    )


def bernoulli_batches(
    steps: int, n_tokens: int, dim: int, rate: float = 0.3, seed: int = 0, batch: int = 64
) -> Iterator[np.ndarray]:
    """u = k AND v with k, v independent Bernoulli(rate) spikes, made `batch` timesteps at a
    time: bool [b, N, D] arrays, `steps` timesteps in all."""
    rng = np.random.default_rng(seed)
    for i in range(0, steps, batch):
        b = min(batch, steps - i)
        k = rng.random((b, n_tokens, dim)) < rate
        v = rng.random((b, n_tokens, dim)) < rate
        yield k & v


def bernoulli_kv(
    steps: int, n_tokens: int, dim: int, rate: float = 0.3, seed: int = 0
) -> np.ndarray:
    """u = k AND v with k, v independent Bernoulli(rate) spikes: bool [steps, N, D] (one batch
    of `bernoulli_batches`)."""
    return next(bernoulli_batches(steps, n_tokens, dim, rate, seed, batch=max(1, steps)),
                np.zeros((0, n_tokens, dim), dtype=bool))


def events_kv(
    events: np.ndarray,
    sensor_size: tuple[int, int, int],
    steps: int,
    n_tokens: int,
    dim: int,
) -> np.ndarray:
    """Spike inputs bool [steps, N, D] from a real recording (EVENT_DTYPE x, y, t, p).

    Events are binned into `steps` equal time bins; the sensor is cut into `n_tokens` bands of
    rows (tokens) and each event lands on channel ((x * H + y) * P + p) mod D of its band: the
    spike map x_t. Keys k = x_t, values v = x_{t-1} OR x_{t-2}: u = k AND v marks pixels that
    fire again within two bins (temporal coincidence, as a k * v product of successive maps).
    """
    if len(events) == 0:
        raise ValueError("events_kv: the recording holds no events")
    _, h, pols = sensor_size
    t = events["t"].astype(np.int64)
    t0, t1 = int(t.min()), int(t.max()) + 1
    b = ((t - t0) * steps // max(1, t1 - t0)).clip(0, steps - 1)
    y = events["y"].astype(np.int64)
    x = events["x"].astype(np.int64)
    p = events["p"].astype(np.int64) % max(1, pols)
    token = (y * n_tokens // max(1, h)).clip(0, n_tokens - 1)
    chan = ((x * h + y) * max(1, pols) + p) % dim
    spikes = np.zeros((steps + 2, n_tokens, dim), dtype=bool)
    spikes[b + 2, token, chan] = True
    return spikes[2:] & (spikes[1:-1] | spikes[:-2])


@dataclass
class HilResult:
    """Outcome of one conformance run."""

    steps: int
    bit_exact: bool
    mismatched_steps: int
    lost: int  # timesteps sent without an output coming back
    retransmits: int
    frames_lost: int
    naks: int
    resets_recovered: int
    steps_per_s: float
    host_cpu_ms_per_step: float
    bytes_per_step: float
    input_rate: float
    output_rate: float
    device: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _batches(inputs: np.ndarray | Iterable[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        for i in range(0, len(inputs), batch):
            yield inputs[i : i + batch]
    else:
        yield from inputs


def run_conformance(
    link: Link,
    params: CoreParams,
    inputs: np.ndarray | Iterable[np.ndarray],
    batch: int = 64,
    load: bool = True,
    progress: Callable[[int, int, Link], None] | None = None,
    total: int | None = None,
) -> HilResult:
    """Handshake, load `params`, run `inputs` and compare each output with IntCore.

    `inputs` is an array [T, N, D] (run in batches of `batch` timesteps) or an iterable of
    [b, N, D] batches, taken one at a time (made on demand, memory follows one batch). Timing
    covers the device's steps only. `progress(done, total, link)` is called after each batch
    (`total`: the timesteps announced, default the array's length; the link's `stats` say what
    it cost)."""
    caps = link.hello()
    if load:
        link.load(params)
    else:
        link.reset_state()
    if total is None:
        total = len(inputs) if isinstance(inputs, np.ndarray) else 0
    ref = IntCore(params)
    n = done = mism = per_step = 0
    spikes_in = spikes_out = 0
    wall = cpu = 0.0
    s0 = link.stats.bytes_sent + link.stats.bytes_received
    for u in _batches(inputs, batch):
        expected = np.stack([ref.step(x) for x in u]) if len(u) else u
        cpu0, t0 = time.thread_time(), time.perf_counter()
        got = link.step(u)
        wall += time.perf_counter() - t0
        cpu += time.thread_time() - cpu0
        n += len(u)
        spikes_in += int(np.count_nonzero(u))
        per_step = int(u[0].size) if len(u) else per_step
        if got:
            out = np.stack(got)
            k = min(len(out), len(expected))
            mism += int(np.any(out[:k] != expected[:k], axis=(1, 2)).sum())
            spikes_out += int(np.count_nonzero(out))
            done += len(out)
        if progress is not None:
            progress(done, max(total, n), link)
    nbytes = link.stats.bytes_sent + link.stats.bytes_received - s0
    return HilResult(
        steps=done,
        bit_exact=done == n and mism == 0,
        mismatched_steps=mism,
        lost=n - done,
        retransmits=link.retransmits,
        frames_lost=link.lost,
        naks=link.naks,
        resets_recovered=link.resets_recovered,
        steps_per_s=n / wall if wall > 0 else float("inf"),
        host_cpu_ms_per_step=1e3 * cpu / max(1, n),
        bytes_per_step=nbytes / max(1, n),
        input_rate=spikes_in / (n * per_step) if n and per_step else 0.0,
        output_rate=spikes_out / (done * per_step) if done and per_step else 0.0,
        device=f"{link.port} (protocol {caps.version}, arith {caps.arith_id}, "
        f"boot {caps.boot_counter}, mtu {caps.mtu}, window {caps.window})",
    )
