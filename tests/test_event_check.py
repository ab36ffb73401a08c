"""The one event check (`validate_events`) has two implementations, numba's loop and numpy's
passes, chosen by whether numba is loaded: both give the same first bad event and kind."""

from __future__ import annotations

import numpy as np
import pytest

from spikestream.events import EVENT_DTYPE, _first_bad_numpy, _first_bad_py


def _case(rng: np.random.Generator, n: int) -> tuple:
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 1000, n))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 8, n), rng.integers(0, 6, n), rng.integers(0, 2, n)
    for _ in range(rng.integers(0, 3)):  # faults of each kind at random places
        i = int(rng.integers(0, n))
        kind = rng.integers(0, 4)
        if kind == 0:
            ev["t"][i] = max(0, int(ev["t"][i]) - int(rng.integers(1, 50)))
        elif kind == 1:
            ev["x"][i] = 8
        elif kind == 2:
            ev["y"][i] = 6 + int(rng.integers(0, 3))
        else:
            ev["p"][i] = 2
    has_last = bool(rng.integers(0, 2))
    last_t = int(rng.integers(0, 20)) if has_last else 0
    return ev["t"], ev["x"], ev["y"], ev["p"], 8, 6, last_t, has_last


@pytest.mark.parametrize("seed", range(40))
def test_numpy_check_equals_the_compiled_loop(seed: int):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 5, 60, 500):
        args = _case(rng, n)
        assert _first_bad_numpy(*args) == _first_bad_py(*args), (seed, n)


def test_strided_fields_and_an_empty_packet():
    rng = np.random.default_rng(1)
    t, x, y, p, w, h, last, has = _case(rng, 400)
    args = (t[::3], x[::3], y[::3], p[::3], w, h, last, has)
    assert _first_bad_numpy(*args) == _first_bad_py(*args)
    empty = np.zeros(0, np.int64)
    assert _first_bad_numpy(empty, empty, empty, empty, 8, 6, 0, True) == (-1, 0)
