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


def _two_link_elbow(shoulder: np.ndarray, hand: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """Elbow of a two-link arm reaching `hand`, on the side that `pref` points to."""
    d_vec = hand - shoulder
    d = float(np.hypot(*d_vec))
    d_cl = min(max(d, abs(_UPPER - _FORE) + 1e-6), _UPPER + _FORE - 1e-6)
    u = d_vec / d if d > 1e-9 else np.array([0.0, 1.0])
    cos_g = (_UPPER**2 + d_cl**2 - _FORE**2) / (2 * _UPPER * d_cl)
    g = math.acos(max(-1.0, min(1.0, cos_g)))
    best, best_score = shoulder, -np.inf
    for sign in (1.0, -1.0):
        c, s = math.cos(sign * g), math.sin(sign * g)
        e = shoulder + _UPPER * np.array([c * u[0] - s * u[1], s * u[0] + c * u[1]])
        score = float(np.dot(e - shoulder, pref))
        if score > best_score:
            best, best_score = e, score
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
            # "other": smooth aperiodic wandering of one or both hands, and a body drift
            self.n_terms = 3
            self.which = r.integers(0, 3)  # 0 right hand, 1 left hand, 2 both
            self.f_other = r.uniform(0.3, 1.2, size=(2, 2, self.n_terms))
            self.a_other = r.uniform(0.02, 0.07, size=(2, 2, self.n_terms))
            self.p_other = r.uniform(0, 2 * math.pi, size=(2, 2, self.n_terms))
            self.center_other = np.array(
                [
                    [r.uniform(0.26, 0.40), r.uniform(0.45, 0.70)],
                    [r.uniform(0.60, 0.74), r.uniform(0.45, 0.70)],
                ]
            )
        self.amp = r.uniform(0.85, 1.15)
        self.rest_wobble = r.uniform(0, 2 * math.pi, size=2)

    def _rest(self, side: str, t: float) -> np.ndarray:
        k = 0 if side == "right" else 1
        return _REST[side] + 0.006 * np.array(
            [math.sin(0.7 * t + self.rest_wobble[k]), math.cos(0.5 * t + self.rest_wobble[k])]
        )

    def hands(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(right hand, left hand) positions in canonical units at time `t` (s)."""
        w = 2 * math.pi * self.freq if self.label != 10 else 0.0
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
    """One person, background and clutter; `render(label, t)` draws a gesture at time `t` (s).

    `motion(label)` draws the gesture's random speed, phase and amplitude; a sequence of
    gestures by the same person calls `set_gesture` between them (the hands blend over
    `blend_s` from one motion to the next).
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
        self._yy, self._xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
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
        return np.clip(img, 0.02, 1.0)

    def motion(self, label: int) -> _Motion:
        return _Motion(gesture_label(label), self.rng)

    def set_gesture(self, label: int, t: float) -> None:
        """Switch to gesture `label` at time `t` (s); the hands blend in from the last motion."""
        self._prev_motion = self._motion
        self._motion = self.motion(label)
        self._blend_start = t

    def _to_px(self, p: np.ndarray, body_shift: np.ndarray) -> np.ndarray:
        """Canonical units (a centred square of side min(W, H)) to pixels."""
        q = 0.5 + self.scale * (p - 0.5) + self.offset + body_shift
        side = min(self.width, self.height)
        return np.array(
            [(self.width - side) / 2 + q[0] * side, (self.height - side) / 2 + q[1] * side]
        )

    def _capsule(
        self, img: np.ndarray, a: np.ndarray, b: np.ndarray, r: float, level: float
    ) -> None:
        """Paint an anti-aliased capsule of radius `r` pixels from `a` to `b` (pixels)."""
        pad = r + 1.5
        x0 = max(int(math.floor(min(a[0], b[0]) - pad)), 0)
        x1 = min(int(math.ceil(max(a[0], b[0]) + pad)) + 1, self.width)
        y0 = max(int(math.floor(min(a[1], b[1]) - pad)), 0)
        y1 = min(int(math.ceil(max(a[1], b[1]) + pad)) + 1, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        px = self._xx[y0:y1, x0:x1] + 0.5
        py = self._yy[y0:y1, x0:x1] + 0.5
        ab = b - a
        den = float(ab @ ab)
        if den > 1e-12:
            s = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / den, 0.0, 1.0)
        else:
            s = np.zeros_like(px)
        dx = px - (a[0] + s * ab[0])
        dy = py - (a[1] + s * ab[1])
        cover = np.clip(r - np.sqrt(dx * dx + dy * dy) + 0.5, 0.0, 1.0)
        view = img[y0:y1, x0:x1]
        view += (level - view) * cover

    def render(self, t: float) -> np.ndarray:
        """The intensity image (H x W, [0, 1]) at time `t` (s)."""
        if self._motion is None:
            raise RuntimeError("set_gesture() before render()")
        img = self.background.copy()
        px_unit = self.scale * min(self.width, self.height)
        for c in self.clutter:
            pos = c["pos"] + c["vel"] * t
            pos = np.mod(pos + 0.2, 1.4) - 0.2  # wrap around, entering from outside the view
            p = np.array([pos[0] * self.width, pos[1] * self.height])
            self._capsule(img, p, p, c["radius"] * min(self.width, self.height), c["level"])
        amp, f, ph = self.sway
        shift = np.array(
            [
                amp * math.sin(2 * math.pi * f * t + ph),
                0.3 * amp * math.cos(2 * math.pi * f * t + ph),
            ]
        )
        right, left = self._motion.hands(t)
        if self._prev_motion is not None and t - self._blend_start < self.blend_s:
            w = max(0.0, (t - self._blend_start) / self.blend_s)
            w = w * w * (3 - 2 * w)
            pr, pl = self._prev_motion.hands(t)
            right, left = (1 - w) * pr + w * right, (1 - w) * pl + w * left
        body, arm = self.body_level, self.arm_level
        px = self._to_px
        # torso and head
        self._capsule(
            img,
            px(np.array([0.5, 0.47]), shift),
            px(np.array([0.5, 1.1]), shift),
            0.13 * px_unit,
            body,
        )
        self._capsule(
            img,
            px(np.array([0.42, 0.42]), shift),
            px(np.array([0.58, 0.42]), shift),
            0.05 * px_unit,
            body,
        )
        self._capsule(
            img,
            px(np.array([0.5, 0.30]), shift),
            px(np.array([0.5, 0.40]), shift),
            0.03 * px_unit,
            body,
        )
        self._capsule(
            img,
            px(np.array([0.5, 0.22]), shift),
            px(np.array([0.5, 0.25]), shift),
            0.07 * px_unit,
            body * 0.95 + 0.05 * arm,
        )
        for side, hand in (("right", right), ("left", left)):
            sh = _SHOULDER[side]
            elbow = _two_link_elbow(sh, hand, _ELBOW_PREF[side])
            # the hand as reached: clamp to the arm's length
            d = hand - sh
            n = float(np.hypot(*d))
            if n > _UPPER + _FORE:
                hand = sh + d * ((_UPPER + _FORE) / n)
            self._capsule(img, px(sh, shift), px(elbow, shift), 0.035 * px_unit, arm)
            self._capsule(img, px(elbow, shift), px(hand, shift), 0.03 * px_unit, arm)
            self._capsule(
                img, px(hand, shift), px(hand, shift), 0.04 * px_unit, min(1.0, arm * 1.1)
            )
        return np.clip(img, 0.0, 1.0)


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
