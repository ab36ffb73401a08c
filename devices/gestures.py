"""Procedural scenes of the eleven DVS128 Gesture motions, rendered as intensity images.

A person seen from the front (head, torso, two-segment arms, hands) is drawn with anti-aliased
edges over a textured background with drifting clutter; the hands follow a trajectory per
gesture and the elbows follow from two-link inverse kinematics. The images are turned into
events by `DVSEmulator`, so the events have the structure of a real sensor (edges, ON ahead of
OFF on a moving bright limb, threshold mismatch, noise).

Coordinates: x to the right, y down, as on the sensor. The person faces the camera, so the
subject's right arm appears on the left of the image. "Clockwise" is clockwise as seen on the
image. Class order and names are those of DVS128 Gesture (Tonic's `DVSGesture.classes`).

Every random choice (speed, phase, position, scale, brightness, clutter, pixel mismatch, noise)
comes from one seed, so a seed gives the same clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from spikestream import SensorSize, empty_events

from .gesture_motion import (
    _BODY_PARTS,
    _ELBOW_PREF,
    _FORE,
    _SHOULDER,
    _UPPER,
    GESTURE_CLASSES,
    _Motion,
    _two_link_elbow,
    gesture_label,
)
from .video import DVSEmulator, DVSParams, lin_log, sensor_size_of

__all__ = ["GESTURE_CLASSES", "GestureScene", "default_dvs_params", "gesture_clip",
           "gesture_frames", "gesture_label"]


class GestureScene:
    """One person, background and clutter; `render(t)` draws the current gesture at `t` (s).

    `set_gesture(label, t)` starts a gesture with its random speed, phase and amplitude; a
    sequence of gestures by the same person calls it between them (the hands blend over
    `blend_s` from one motion to the next). The slowly swaying body is drawn at key times
    `body_step_s` apart and blended in between; the arms are drawn at every frame.
    """

    def __init__(self, sensor_size: SensorSize, rng: np.random.Generator) -> None:
        self.width, self.height = int(sensor_size[0]), int(sensor_size[1])
        self.rng = rng
        r = rng
        self.scale = r.uniform(0.75, 1.05)
        self.offset = np.array([r.uniform(-0.08, 0.08), r.uniform(-0.04, 0.08)])
        dark_person = r.random() < 0.3
        self.bg_level = r.uniform(0.55, 0.8) if dark_person else r.uniform(0.12, 0.3)
        self.body_level = r.uniform(0.08, 0.2) if dark_person else r.uniform(0.55, 0.85)
        self.arm_level = float(np.clip(self.body_level * r.uniform(0.8, 1.25), 0.03, 1.0))
        self.sway = (r.uniform(0.003, 0.01), r.uniform(0.2, 0.5), r.uniform(0, 2 * math.pi))
        self.background = self._texture(r)
        n_clutter = int(r.integers(0, 4))
        self.clutter = [
            {
                "pos": np.array([r.uniform(0, 1), r.uniform(0, 1)]),
                "vel": r.uniform(-0.08, 0.08, size=2),
                "radius": r.uniform(0.03, 0.08),
                "level": r.uniform(0.1, 0.9),
            }
            for _ in range(n_clutter)
        ]
        self._xs = (np.arange(self.width, dtype=np.float32) + 0.5)[None, :]
        self._ys = (np.arange(self.height, dtype=np.float32) + 0.5)[:, None]
        self.body_step_s = 0.02
        self._body_cache: dict[int, np.ndarray] = {}
        self._motion: _Motion | None = None
        self._prev_motion: _Motion | None = None
        self._blend_start = 0.0
        self.blend_s = 0.25

    def _texture(self, r: np.random.Generator) -> np.ndarray:
        """Static low-contrast background: smooth blobs and a gradient."""
        h, w = self.height, self.width
        img = np.full((h, w), self.bg_level)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img += r.uniform(-0.05, 0.05) * (xx - 0.5) + r.uniform(-0.05, 0.05) * (yy - 0.5)
        for _ in range(int(r.integers(3, 9))):
            cx, cy, s = r.uniform(0, 1), r.uniform(0, 1), r.uniform(0.03, 0.15)
            img += r.uniform(-0.08, 0.08) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        return np.clip(img, 0.02, 1.0).astype(np.float32)

    def motion(self, label: int) -> _Motion:
        return _Motion(gesture_label(label), self.rng)

    def set_gesture(self, label: int, t: float) -> None:
        """Switch to gesture `label` at time `t` (s); the hands blend in from the last motion."""
        self._prev_motion = self._motion
        self._motion = self.motion(label)
        self._blend_start = t

    def _to_px(self, p: Sequence[float], shift: tuple[float, float]) -> tuple[float, float]:
        """Canonical units (a centred square of side min(W, H)) to pixels."""
        side = min(self.width, self.height)
        qx = 0.5 + self.scale * (p[0] - 0.5) + self.offset[0] + shift[0]
        qy = 0.5 + self.scale * (p[1] - 0.5) + self.offset[1] + shift[1]
        return (self.width - side) / 2 + qx * side, (self.height - side) / 2 + qy * side

    def _capsule(
        self,
        img: np.ndarray,
        a: tuple[float, float],
        b: tuple[float, float],
        r: float,
        level: float,
    ) -> None:
        """Paint an anti-aliased capsule of radius `r` pixels from `a` to `b` (pixels)."""
        pad = r + 1.5
        x0 = max(int(math.floor(min(a[0], b[0]) - pad)), 0)
        x1 = min(int(math.ceil(max(a[0], b[0]) + pad)) + 1, self.width)
        y0 = max(int(math.floor(min(a[1], b[1]) - pad)), 0)
        y1 = min(int(math.ceil(max(a[1], b[1]) + pad)) + 1, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        # pixel centres relative to a
        px = self._xs[:, x0:x1] - a[0]
        py = self._ys[y0:y1] - a[1]
        abx, aby = b[0] - a[0], b[1] - a[1]
        den = abx * abx + aby * aby
        if den > 1e-12:
            s = (py * (aby / den)) + (px * (abx / den))
            np.clip(s, 0.0, 1.0, out=s)
            dx = px - s * abx
            dy = py - s * aby
        else:
            dx, dy = px, py  # a disc: broadcasting gives the full patch below
        cover = np.sqrt(dx * dx + dy * dy)
        np.subtract(r + 0.5, cover, out=cover)
        np.clip(cover, 0.0, 1.0, out=cover)
        view = img[y0:y1, x0:x1]
        view += (level - view) * cover

    def _sway(self, t: float) -> tuple[float, float]:
        amp, f, ph = self.sway
        w = 2 * math.pi * f * t + ph
        return amp * math.sin(w), 0.3 * amp * math.cos(w)

    def _body_cover(self, k: int) -> np.ndarray:
        """Coverage of torso, shoulders, neck and head at key time `k * body_step_s`."""
        cached = self._body_cache.get(k)
        if cached is not None:
            return cached
        cover = np.zeros((self.height, self.width), dtype=np.float32)
        shift = self._sway(k * self.body_step_s)
        unit = self.scale * min(self.width, self.height)
        px = self._to_px
        for a, b, r in _BODY_PARTS:
            self._capsule(cover, px(a, shift), px(b, shift), r * unit, 1.0)
        if len(self._body_cache) > 2:
            self._body_cache.pop(min(self._body_cache))
        self._body_cache[k] = cover
        return cover

    def render(self, t: float) -> np.ndarray:
        """The intensity image (H x W, float32 in [0, 1]) at time `t` (s)."""
        if self._motion is None:
            raise RuntimeError("set_gesture() before render()")
        img = self.background.copy()
        side = min(self.width, self.height)
        unit = self.scale * side
        for c in self.clutter:
            pos = np.mod(c["pos"] + c["vel"] * t + 0.2, 1.4) - 0.2  # wraps, entering from outside
            p = (float(pos[0]) * self.width, float(pos[1]) * self.height)
            self._capsule(img, p, p, c["radius"] * side, c["level"])
        # the body sways slowly: its coverage is drawn at key times and blended in between
        k = math.floor(t / self.body_step_s)
        w = t / self.body_step_s - k
        cover = (1 - w) * self._body_cover(k) + w * self._body_cover(k + 1)
        img += (self.body_level - img) * cover
        right, left = self._motion.hands(t)
        if self._prev_motion is not None and t - self._blend_start < self.blend_s:
            b = max(0.0, (t - self._blend_start) / self.blend_s)
            b = b * b * (3 - 2 * b)
            pr, pl = self._prev_motion.hands(t)
            right, left = (1 - b) * pr + b * right, (1 - b) * pl + b * left
        shift = self._sway(t)
        arm = self.arm_level
        px = self._to_px
        for side_name, hand in (("right", right), ("left", left)):
            sh = _SHOULDER[side_name]
            d = hand - sh
            n = math.hypot(float(d[0]), float(d[1]))
            if n > _UPPER + _FORE:  # the hand as reached: clamp to the arm's length
                hand = sh + d * ((_UPPER + _FORE) / n)
            elbow = _two_link_elbow(sh, hand, _ELBOW_PREF[side_name])
            self._capsule(img, px(sh, shift), px(elbow, shift), 0.035 * unit, arm)
            self._capsule(img, px(elbow, shift), px(hand, shift), 0.03 * unit, arm)
            hp = px(hand, shift)
            self._capsule(img, hp, hp, 0.04 * unit, min(1.0, arm * 1.1))
        np.clip(img, 0.0, 1.0, out=img)
        return img


def default_dvs_params(rng: np.random.Generator) -> DVSParams:
    """Pixel parameters of a DVS128-like sensor, varied a little per clip."""
    return DVSParams(
        pos_threshold=rng.uniform(0.18, 0.28),
        neg_threshold=rng.uniform(0.18, 0.28),
        sigma_threshold=0.03,
        refractory_us=int(rng.integers(50, 300)),
        leak_rate_hz=0.1,
        shot_noise_rate_hz=rng.uniform(0.05, 0.5),
    )


def gesture_frames(
    sequence: Sequence[int | str],
    *,
    duration_s: float | Sequence[float] = 1.5,
    sensor_size: SensorSize | str = (128, 128, 2),
    fps: float = 250.0,
    seed: int | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield `(t_us, label, log intensity frame)` of one person performing `sequence`."""
    size = sensor_size_of(sensor_size)
    labels = [gesture_label(g) for g in sequence]
    durations = (
        [float(duration_s)] * len(labels)
        if isinstance(duration_s, (int, float))
        else [float(d) for d in duration_s]
    )
    if len(durations) != len(labels):
        raise ValueError(f"{len(durations)} durations for {len(labels)} gestures")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rng = np.random.default_rng(seed)
    scene = GestureScene(size, rng)
    step_us = 1e6 / fps
    t_start = 0.0
    frame_index = 0
    for label, dur in zip(labels, durations, strict=True):
        scene.set_gesture(label, t_start)
        t_end = t_start + dur
        while True:
            t_us = int(round(frame_index * step_us))
            if t_us > round(t_end * 1e6) and frame_index > 0:
                break
            yield t_us, label, lin_log(scene.render(t_us * 1e-6))
            frame_index += 1
        t_start = t_end


def gesture_clip(
    label: int | str,
    duration_s: float = 1.5,
    sensor_size: SensorSize | str = (128, 128, 2),
    seed: int | None = None,
    *,
    fps: float = 250.0,
    params: DVSParams | None = None,
) -> np.ndarray:
    """Events (t from 0 µs) of one randomly drawn person performing gesture `label`."""
    size = sensor_size_of(sensor_size)
    rng = np.random.default_rng(seed)
    emu_seed, scene_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    emu = DVSEmulator(size, params or default_dvs_params(rng), seed=emu_seed)
    parts = []
    for t_us, _, log in gesture_frames(
        [label], duration_s=duration_s, sensor_size=size, fps=fps, seed=scene_seed
    ):
        ev = emu.step_log(log, t_us)
        if len(ev):
            parts.append(ev)
    return np.concatenate(parts) if parts else empty_events()
