"""Frames to events in the manner of ESIM and v2e: a per-pixel DVS model driven by intensity images.

Each pixel compares its log intensity with a memorised reference level; whenever the change
reaches the pixel's ON (or OFF) contrast threshold it emits an event and moves the reference by
one threshold. Between two frames the log intensity of every pixel is taken to change linearly
in time (as ESIM does), so a pixel whose log intensity rises by m thresholds emits m ON events,
the k-th at the moment the straight line crosses `reference + k * threshold`. Thresholds vary
from pixel to pixel (Gaussian mismatch), a pixel is blind for a refractory period after each
event (changes in that time are lost, as when the reset switch is held), the reference leaks
downwards (v2e's leak events, ON), and shot noise adds random events at a per-pixel rate.

The log is v2e's "lin-log": linear below a small intensity so that dark pixels are not noisy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spikestream import EVENT_DTYPE, SensorSize, empty_events

#: Pixel arrays of real sensors, (W, H, P).
SENSORS: dict[str, SensorSize] = {
    "dvs128": (128, 128, 2),
    "davis240": (240, 180, 2),
    "davis346": (346, 260, 2),
}

# A crossing is counted when the change reaches the threshold within this (float rounding).
_EPS = 1e-9


def sensor_size_of(sensor: str | Sequence[int]) -> SensorSize:
    """`"dvs128"`, `"davis240"`, `"davis346"` or an explicit `(W, H[, P])`."""
    if isinstance(sensor, str):
        key = sensor.lower().replace("-", "").replace("_", "")
        if key not in SENSORS:
            raise ValueError(f"unknown sensor {sensor!r}; known: {', '.join(SENSORS)}")
        return SENSORS[key]
    size = tuple(int(s) for s in sensor)
    if len(size) == 2:
        size = (*size, 2)
    if len(size) != 3:
        raise ValueError(f"sensor size must be (W, H) or (W, H, P), got {sensor}")
    return size  # type: ignore[return-value]


def lin_log(intensity: np.ndarray, threshold: float = 20.0 / 255.0) -> np.ndarray:
    """v2e's lin-log on the 0..255 scale: `log(255 I)` above the knee, linear below it.

    Below `threshold` (in [0, 1] units; v2e's 20 of 255) the curve is the straight line from 0
    to the log at the knee, so dark, noisy pixels do not produce a storm of events.
    """
    i = np.asarray(intensity, dtype=np.float64) * 255.0
    knee = float(threshold) * 255.0
    if knee <= 1.0:
        raise ValueError(f"lin-log knee {threshold} must exceed 1/255")
    lin = i * (np.log(knee) / knee)
    return np.where(i > knee, np.log(np.maximum(i, knee)), lin)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """An image as float64 grey levels in [0, 1] (uint8/uint16 scaled, RGB(A) averaged)."""
    a = np.asarray(frame)
    if a.ndim not in (2, 3):
        raise ValueError(f"a frame must be HxW or HxWxC, got shape {a.shape}")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype, 1.0)
    g = a.astype(np.float64) / scale
    if g.ndim == 3:
        g = g[..., :3].mean(axis=-1)
    return np.clip(g, 0.0, 1.0)


def resize_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a grey image (pixel centres aligned, as OpenCV's INTER_LINEAR)."""
    h0, w0 = frame.shape
    if (w0, h0) == (width, height):
        return frame
    ys = np.clip((np.arange(height) + 0.5) * (h0 / height) - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(width) + 0.5) * (w0 / width) - 0.5, 0, w0 - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h0 - 1)
    x1 = np.minimum(x0 + 1, w0 - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = frame[y0][:, x0] * (1 - fx) + frame[y0][:, x1] * fx
    bot = frame[y1][:, x0] * (1 - fx) + frame[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


@dataclass(frozen=True)
class DVSParams:
    """Pixel model parameters (log-intensity units for thresholds, as in v2e)."""

    pos_threshold: float = 0.2
    neg_threshold: float = 0.2
    sigma_threshold: float = 0.03  # per-pixel Gaussian mismatch of both thresholds
    min_threshold: float = 0.01  # mismatch never drives a threshold below this
    refractory_us: int = 0
    leak_rate_hz: float = 0.0  # reference drift, in ON thresholds per second
    shot_noise_rate_hz: float = 0.0  # random events per pixel per second (half ON, half OFF)
    log_threshold: float = 20.0 / 255.0  # lin-log knee

    def __post_init__(self) -> None:
        if self.pos_threshold <= 0 or self.neg_threshold <= 0:
            raise ValueError("contrast thresholds must be > 0")
        if self.sigma_threshold < 0 or self.min_threshold <= 0:
            raise ValueError("sigma_threshold must be >= 0 and min_threshold > 0")
        if self.refractory_us < 0 or self.leak_rate_hz < 0 or self.shot_noise_rate_hz < 0:
            raise ValueError("refractory, leak and shot noise must be >= 0")


class DVSEmulator:
    """Feeds frames one at a time (`step(frame, t_us)`) and returns the events they cause.

    The first frame only sets every pixel's reference (no events). Later frames give the events
    between the previous frame's time and theirs, sorted by time. `seed` fixes the threshold
    mismatch, the leak phase and the noise, so the same frames give the same events.
    `refractory_dropped` counts crossings lost to the refractory period.
    """

    def __init__(
        self,
        sensor_size: SensorSize | str = "dvs128",
        params: DVSParams | None = None,
        *,
        seed: int | None = None,
        **overrides: float,
    ) -> None:
        self.sensor_size = sensor_size_of(sensor_size)
        params = params or DVSParams()
        self.params = replace(params, **overrides) if overrides else params
        self.seed = seed
        self.reset()

    @property
    def width(self) -> int:
        return self.sensor_size[0]

    @property
    def height(self) -> int:
        return self.sensor_size[1]

    def reset(self) -> None:
        """Forget the references and redraw the per-pixel thresholds from the seed."""
        p = self.params
        self._rng = np.random.default_rng(self.seed)
        shape = (self.height, self.width)
        self.pos_thresholds = np.maximum(
            p.pos_threshold + p.sigma_threshold * self._rng.standard_normal(shape), p.min_threshold
        )
        self.neg_thresholds = np.maximum(
            p.neg_threshold + p.sigma_threshold * self._rng.standard_normal(shape), p.min_threshold
        )
        # the changes at which a pixel fires (the same tolerance as the crossing count below)
        self._pos_fire = (self.pos_thresholds * (1 - _EPS)).ravel()
        self._neg_fire = (-self.neg_thresholds * (1 - _EPS)).ravel()
        self._ref: np.ndarray | None = None  # memorised log level per pixel
        self._log: np.ndarray | None = None  # log intensity of the previous frame
        self._t_us: int | None = None
        self._last_event = np.full(self.height * self.width, np.iinfo(np.int64).min // 2)
        self.refractory_dropped = 0

    def log_frame(self, frame: np.ndarray) -> np.ndarray:
        """The log intensity the pixels see, after grey conversion and resizing to the sensor."""
        g = to_gray(frame)
        g = resize_frame(g, self.width, self.height)
        return lin_log(g, self.params.log_threshold)

    def step(self, frame: np.ndarray, t_us: int) -> np.ndarray:
        """Events caused by moving from the previous frame to `frame` at time `t_us`."""
        log = self.log_frame(frame)
        return self.step_log(log, t_us)

    def step_log(self, log: np.ndarray, t_us: int) -> np.ndarray:
        """As `step`, for a frame already in log intensity at sensor resolution."""
        t_us = int(t_us)
        if log.shape != (self.height, self.width):
            raise ValueError(f"log frame {log.shape} does not match sensor {self.sensor_size}")
        if self._ref is None or self._log is None or self._t_us is None:
            self._ref = log.astype(np.float64).copy()
            if self.params.leak_rate_hz > 0:
                # v2e: a random leak phase so that leak events do not fire in step
                self._ref -= self._rng.random(log.shape) * self.pos_thresholds
            self._log = log.astype(np.float64).copy()
            self._t_us = t_us
            return empty_events()
        if t_us < self._t_us:
            raise ValueError(f"frame time {t_us} µs goes back from {self._t_us} µs")
        t0, dt = self._t_us, t_us - self._t_us
        p = self.params
        if p.leak_rate_hz > 0 and dt > 0:
            self._ref -= p.leak_rate_hz * self.pos_thresholds * (dt * 1e-6)
        l1 = np.array(log, dtype=np.float64).ravel()  # a copy: it becomes the next l0
        l0 = self._log.ravel()
        ref = self._ref.ravel()
        diff = l1 - ref
        # only pixels whose change reaches their threshold fire (most do not)
        cand = np.flatnonzero((diff >= self._pos_fire) | (diff <= self._neg_fire))
        d = diff[cand]
        pos_th = self.pos_thresholds.ravel()[cand]
        neg_th = self.neg_thresholds.ravel()[cand]
        n_on = np.floor(np.maximum(d, 0.0) / pos_th + _EPS).astype(np.int64)
        n_off = np.floor(np.maximum(-d, 0.0) / neg_th + _EPS).astype(np.int64)
        pix, t_ev, pol = self._crossings(
            cand, l0[cand], l1[cand], ref[cand], n_on, n_off, pos_th, neg_th, t0, dt
        )
        # the reference follows every crossing, emitted or lost to the refractory period
        ref[cand] += n_on * pos_th - n_off * neg_th
        if p.shot_noise_rate_hz > 0 and dt > 0:
            n_noise = self._rng.poisson(p.shot_noise_rate_hz * dt * 1e-6 * l1.size)
            npix = self._rng.integers(0, l1.size, n_noise)
            nt = t0 + 1 + np.floor(self._rng.random(n_noise) * dt).astype(np.int64)
            npol = self._rng.integers(0, 2, n_noise).astype(np.uint8)
            pix = np.concatenate([pix, npix])
            t_ev = np.concatenate([t_ev, np.minimum(nt, t0 + dt)])
            pol = np.concatenate([pol, npol])
        pix, t_ev, pol = self._refractory(pix, t_ev, pol)
        self._log = l1.reshape(self.height, self.width)
        self._t_us = t_us
        order = np.lexsort((pix, t_ev))
        ev = np.empty(len(order), dtype=EVENT_DTYPE)
        ev["x"] = pix[order] % self.width
        ev["y"] = pix[order] // self.width
        ev["t"] = t_ev[order]
        ev["p"] = pol[order]
        return ev

    @staticmethod
    def _crossings(
        cand: np.ndarray,
        l0: np.ndarray,
        l1: np.ndarray,
        ref0: np.ndarray,
        n_on: np.ndarray,
        n_off: np.ndarray,
        pos_th: np.ndarray,
        neg_th: np.ndarray,
        t0: int,
        dt: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel, time and polarity of every threshold crossing, times interpolated linearly.

        Arrays are per candidate pixel (`cand` holds their flat indices).
        """
        on = np.flatnonzero(n_on)
        off = np.flatnonzero(n_off)
        on_i = np.repeat(on, n_on[on])
        off_i = np.repeat(off, n_off[off])
        k_on = _ranks(n_on[on])
        k_off = _ranks(n_off[off])
        level = np.concatenate(
            [ref0[on_i] + k_on * pos_th[on_i], ref0[off_i] - k_off * neg_th[off_i]]
        )
        idx = np.concatenate([on_i, off_i])
        pol = np.concatenate([np.ones(len(on_i), np.uint8), np.zeros(len(off_i), np.uint8)])
        span = l1[idx] - l0[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(np.abs(span) > 0, (level - l0[idx]) / span, 1.0)
        frac = np.clip(frac, 0.0, 1.0)
        t_ev = t0 + np.floor(frac * dt + 1e-6).astype(np.int64)
        return cand[idx], t_ev, pol

    def _refractory(
        self, pix: np.ndarray, t_ev: np.ndarray, pol: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Drop events that come less than `refractory_us` after the pixel's previous event."""
        if len(pix) == 0:
            return pix, t_ev, pol
        order = np.lexsort((t_ev, pix))
        pix, t_ev, pol = pix[order], t_ev[order], pol[order]
        refr = int(self.params.refractory_us)
        if refr <= 0:
            return pix, t_ev, pol
        starts = np.r_[0, np.flatnonzero(np.diff(pix)) + 1]
        counts = np.diff(np.r_[starts, len(pix)])
        rank = _ranks(counts) - 1
        keep = np.zeros(len(pix), dtype=bool)
        for r in range(int(rank.max()) + 1):
            idx = np.flatnonzero(rank == r)
            ok = t_ev[idx] - self._last_event[pix[idx]] >= refr
            keep[idx[ok]] = True
            self._last_event[pix[idx[ok]]] = t_ev[idx[ok]]
        self.refractory_dropped += int(len(pix) - keep.sum())
        return pix[keep], t_ev[keep], pol[keep]

    def convert(self, frames: Iterable[np.ndarray], timestamps_us: Iterable[int]) -> np.ndarray:
        """All events of a frame sequence (the first frame sets the references)."""
        parts = [self.step(f, t) for f, t in zip(frames, timestamps_us, strict=False)]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else empty_events()


def _ranks(counts: np.ndarray) -> np.ndarray:
    """1..c for each count c, concatenated: [2, 3] -> [1, 2, 1, 2, 3]."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts) + 1


def read_image(path: str | Path) -> np.ndarray:
    """An image file as grey levels in [0, 1] (matplotlib reads PNG; other formats via Pillow)."""
    import matplotlib.image as mpimg

    try:
        img = mpimg.imread(str(path))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    return to_gray(img)


def image_sequence(
    folder: str | Path, *, fps: float | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(t_us, grey image)` from a folder of frames.

    With an `images.txt` of `timestamp_seconds relative_path` lines (the UZH event-camera
    dataset layout; `#` comments allowed) its timestamps are used; with a `timestamps.txt` of
    one time in seconds per line (the ESIM / rpg_vid2e / v2e layout) those times go with the
    images in name order (in the folder, or its `imgs/` or `images/` subfolder); otherwise the
    folder's images in name order at `fps` frames per second.
    """
    folder = Path(folder)
    index = folder / "images.txt"
    stamps = folder / "timestamps.txt"
    if not index.is_file() and stamps.is_file():
        yield from _timestamped_images(folder, stamps)
        return
    if index.is_file():
        for lineno, line in enumerate(index.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{index} line {lineno}: expected 'timestamp path', got {line!r}")
            try:
                t_s = float(parts[0])
            except ValueError as e:
                raise ValueError(f"{index} line {lineno}: bad timestamp {parts[0]!r}") from e
            yield int(round(t_s * 1e6)), read_image(folder / parts[1])
        return
    if fps is None or fps <= 0:
        raise ValueError(f"{folder}: no images.txt, so give fps > 0 for the frame times")
    files = sorted(
        f for f in folder.iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"}
    )
    if not files:
        raise ValueError(f"{folder}: no images (png, jpg, bmp) and no images.txt")
    for i, f in enumerate(files):
        yield int(round(i * 1e6 / fps)), read_image(f)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def _timestamped_images(folder: Path, stamps: Path) -> Iterator[tuple[int, np.ndarray]]:
    """`timestamps.txt` (seconds, one per line) beside images in name order."""
    times = []
    for lineno, line in enumerate(stamps.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            times.append(int(round(float(line.split()[0]) * 1e6)))
        except ValueError as e:
            raise ValueError(f"{stamps} line {lineno}: bad timestamp {line!r}") from e
    for sub in (folder, folder / "imgs", folder / "images"):
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) \
            if sub.is_dir() else []
        if files:
            break
    if len(files) != len(times):
        raise ValueError(f"{stamps}: {len(times)} timestamps for {len(files)} images")
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError(f"{stamps}: timestamps go back in time")
    for t, f in zip(times, files, strict=True):
        yield t, read_image(f)
