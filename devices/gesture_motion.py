"""The body model and the motion of each of the eleven DVS128 Gesture classes.

Canonical units: the frame is 1 x 1, x to the right, y down; the person faces the camera, so the
subject's right shoulder is on the left of the image. Hands follow a trajectory per gesture with
a random speed, phase and amplitude (`_Motion`); elbows follow from two-link inverse kinematics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
