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
from dataclasses import dataclass

import numpy as np

from spikestream import SensorSize, empty_events

from .video import DVSEmulator, DVSParams, lin_log, sensor_size_of

#: DVS128 Gesture's classes, in its label order (label = index).
GESTURE_CLASSES: tuple[str, ...] = (
    "Hand clapping",
    "Right hand wave",
    "Left hand wave",
    "Right arm cw",
    "Right arm ccw",
    "Left arm cw",
    "Left arm ccw",
    "Arm roll",
    "Air drums",
    "Air guitar",
    "Other gestures",
)

# Body in canonical units (the frame is 1 x 1); the subject's right shoulder is on the left.
_SHOULDER = {"right": np.array([0.34, 0.40]), "left": np.array([0.66, 0.40])}
_UPPER, _FORE = 0.17, 0.16  # arm segment lengths
_REST = {"right": np.array([0.30, 0.74]), "left": np.array([0.70, 0.74])}
_ELBOW_PREF = {"right": np.array([-1.0, 0.6]), "left": np.array([1.0, 0.6])}
# torso, shoulders, neck, head: (from, to, radius) in canonical units
_BODY_PARTS = (
    ((0.5, 0.47), (0.5, 1.1), 0.13),
    ((0.42, 0.42), (0.58, 0.42), 0.05),
    ((0.5, 0.30), (0.5, 0.40), 0.03),
    ((0.5, 0.22), (0.5, 0.25), 0.07),
)


def gesture_label(name_or_label: int | str) -> int:
    """A label from its index or its (case-insensitive, partial) class name."""
    if isinstance(name_or_label, (int, np.integer)):
        if not 0 <= int(name_or_label) < len(GESTURE_CLASSES):
            raise ValueError(f"gesture label {name_or_label} outside 0..{len(GESTURE_CLASSES) - 1}")
        return int(name_or_label)
    key = str(name_or_label).strip().lower().replace("_", " ")
    exact = [i for i, n in enumerate(GESTURE_CLASSES) if n.lower() == key]
    if exact:
        return exact[0]
    partial = [i for i, n in enumerate(GESTURE_CLASSES) if n.lower().startswith(key)]
    if len(partial) == 1:
        return partial[0]
    raise ValueError(f"unknown gesture {name_or_label!r}; classes: {', '.join(GESTURE_CLASSES)}")


def _two_link_elbow(
    shoulder: Sequence[float], hand: Sequence[float], pref: Sequence[float]
) -> tuple[float, float]:
    """Elbow of a two-link arm reaching `hand`, on the side that `pref` points to."""
    dx, dy = float(hand[0]) - shoulder[0], float(hand[1]) - shoulder[1]
    d = math.hypot(dx, dy)
    d_cl = min(max(d, abs(_UPPER - _FORE) + 1e-6), _UPPER + _FORE - 1e-6)
    ux, uy = (dx / d, dy / d) if d > 1e-9 else (0.0, 1.0)
    cos_g = (_UPPER**2 + d_cl**2 - _FORE**2) / (2 * _UPPER * d_cl)
    g = math.acos(max(-1.0, min(1.0, cos_g)))
    best, best_score = (float(shoulder[0]), float(shoulder[1])), -math.inf
    for sign in (1.0, -1.0):
        c, s = math.cos(sign * g), math.sin(sign * g)
        ex, ey = _UPPER * (c * ux - s * uy), _UPPER * (s * ux + c * uy)
        score = ex * pref[0] + ey * pref[1]
        if score > best_score:
            best, best_score = (shoulder[0] + ex, shoulder[1] + ey), score
    return best


@dataclass
class _Motion:
    """Hand trajectories of one gesture, drawn from the scene's random generator."""

    label: int
    rng: np.random.Generator

    def __post_init__(self) -> None:
        r = self.rng
        self.phase = r.uniform(0, 2 * math.pi)
        self.speed = r.uniform(0.8, 1.25)
        lab = self.label
        if lab == 0:
            self.freq = 2.0 * self.speed
        elif lab in (1, 2):
            self.freq = 2.2 * self.speed
        elif lab in (3, 4, 5, 6):
            self.freq = 0.9 * self.speed
        elif lab == 7:
            self.freq = 1.8 * self.speed
            self.roll_dir = 1.0 if r.random() < 0.5 else -1.0
        elif lab == 8:
            self.freq = 2.8 * self.speed
        elif lab == 9:
            self.freq = 4.0 * self.speed
        else:
            # "other": one of several everyday movements that belong to no class:
            # 0 smooth aperiodic wandering of one or both hands, 1 scratching the head,
            # 2 stretching both arms up and down slowly
            self.kind = int(r.integers(0, 3))
            self.n_terms = 3
            self.which = int(r.integers(0, 3))  # 0 right hand, 1 left hand, 2 both
            self.f_other = r.uniform(0.3, 1.2, size=(2, 2, self.n_terms))
            self.a_other = r.uniform(0.03, 0.09, size=(2, 2, self.n_terms))
            self.p_other = r.uniform(0, 2 * math.pi, size=(2, 2, self.n_terms))
            self.center_other = np.array(
                [
                    [r.uniform(0.24, 0.40), r.uniform(0.40, 0.70)],
                    [r.uniform(0.60, 0.76), r.uniform(0.40, 0.70)],
                ]
            )
            self.freq = r.uniform(3.0, 5.0) if self.kind == 1 else r.uniform(0.3, 0.6)
        self.amp = r.uniform(0.85, 1.15)
        self.rest_wobble = r.uniform(0, 2 * math.pi, size=2)

    def _rest(self, side: str, t: float) -> np.ndarray:
        k = 0 if side == "right" else 1
        return _REST[side] + 0.006 * np.array(
            [math.sin(0.7 * t + self.rest_wobble[k]), math.cos(0.5 * t + self.rest_wobble[k])]
        )

    def hands(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(right hand, left hand) positions in canonical units at time `t` (s)."""
        w = 2 * math.pi * self.freq
        ph = w * t + self.phase
        a = self.amp
        lab = self.label
        if lab == 0:  # clap: hands meet in front of the chest
            gap = 0.02 + a * 0.10 * 0.5 * (1 + math.cos(ph))
            y = 0.60 + 0.01 * math.sin(ph)
            return np.array([0.5 - gap, y]), np.array([0.5 + gap, y])
        if lab in (1, 2):  # wave: raised forearm swinging sideways above the shoulder
            side = "right" if lab == 1 else "left"
            sx = -1.0 if side == "right" else 1.0
            sh = _SHOULDER[side]
            ang = -math.pi / 2 + sx * 0.25 + a * 0.45 * math.sin(ph)
            hand = (
                sh + np.array([sx * 0.06, -0.04]) + 0.20 * np.array([math.cos(ang), math.sin(ang)])
            )
            other = "left" if side == "right" else "right"
            pair = {side: hand, other: self._rest(other, t)}
            return pair["right"], pair["left"]
        if lab in (3, 4, 5, 6):  # whole arm rotating about the shoulder
            side = "right" if lab in (3, 4) else "left"
            direction = 1.0 if lab in (3, 5) else -1.0  # increasing angle (y down) = clockwise
            sh = _SHOULDER[side]
            ang = direction * ph
            hand = sh + 0.95 * (_UPPER + _FORE) * np.array([math.cos(ang), math.sin(ang)])
            other = "left" if side == "right" else "right"
            pair = {side: hand, other: self._rest(other, t)}
            return pair["right"], pair["left"]
        if lab == 7:  # arm roll: forearms circling each other in front of the body
            c = np.array([0.5, 0.60])
            r = a * 0.07
            ang = self.roll_dir * ph
            right = c + np.array([-0.05 + r * math.cos(ang), r * math.sin(ang)])
            left = c + np.array([0.05 + r * math.cos(ang + math.pi), r * math.sin(ang + math.pi)])
            return right, left
        if lab == 8:  # air drums: alternating sharp strokes at waist height

            def stroke(p: float) -> float:
                return abs(math.sin(p / 2)) ** 1.5

            right = np.array([0.38, 0.58 + a * 0.09 * stroke(ph)])
            left = np.array([0.62, 0.58 + a * 0.09 * stroke(ph + math.pi)])
            return right, left
        if lab == 9:  # air guitar: left hand on the neck, right hand strumming fast
            left = np.array([0.76 + 0.02 * math.sin(0.25 * ph), 0.46 + 0.015 * math.sin(0.5 * ph)])
            right = np.array([0.44 + 0.01 * math.sin(ph), 0.66 + a * 0.05 * math.sin(ph)])
            return right, left
        # other
        if self.kind == 1:  # a hand scratches the side of the head, small and fast
            side = "right" if self.which != 1 else "left"
            sx = -1.0 if side == "right" else 1.0
            hand = np.array([0.5 + sx * 0.09 + 0.012 * math.sin(ph), 0.22 + 0.02 * math.cos(ph)])
            other = "left" if side == "right" else "right"
            pair = {side: hand, other: self._rest(other, t)}
            return pair["right"], pair["left"]
        if self.kind == 2:  # both arms stretch up overhead and come down, slowly
            lift = 0.5 * (1 - math.cos(ph)) * a
            right = _REST["right"] + lift * np.array([-0.02, -0.55])
            left = _REST["left"] + lift * np.array([0.02, -0.55])
            return right, left
        out = []
        for k in range(2):
            moving = self.which == 2 or self.which == k
            if not moving:
                out.append(self._rest("right" if k == 0 else "left", t))
                continue
            pos = self.center_other[k].copy()
            for ax in range(2):
                pos[ax] += float(
                    np.sum(
                        self.a_other[k, ax]
                        * np.sin(2 * math.pi * self.f_other[k, ax] * t + self.p_other[k, ax])
                    )
                )
            out.append(pos)
        return out[0], out[1]


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
