"""How every fast engine is checked against eager `model.step` before it is used."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from spikestream.pipeline.network.state import State, named_leaves

StepFn = Callable[[Tensor, State], tuple[Tensor, State]]


def check_frames(example_frame: Tensor, steps: int, seed: int) -> list[Tensor]:
    """The example frame, then random sparse event-count frames of its shape and density."""
    g = torch.Generator().manual_seed(seed)
    density = float((example_frame != 0).float().mean())
    density = min(max(density, 0.01), 0.5)
    out = [example_frame]
    for _ in range(steps - 1):
        mask = torch.rand(example_frame.shape, generator=g) < density
        counts = torch.randint(1, 4, example_frame.shape, generator=g)
        out.append((mask * counts).to(example_frame.dtype).to(example_frame.device))
    return out


def verify_step(model: Any, step: StepFn, frames: Sequence[Tensor], state: State,
                atol: float = 1e-5, rtol: float = 0.0, max_off: float = 0.0,
                forced: bool = False) -> str | None:
    """Run `step` and eager `model.step` side by side over `frames` from `state` (both in the
    model's state layout); returns None when every step's logits agree within
    `atol + rtol * |eager|` and so do its state tensors, all but a fraction `max_off` of
    their values, else what differed.

    `forced=True` is the check for an engine that sums in another order, where a membrane
    within rounding of its threshold may fire in one and not the other (a flip; in a large
    model one in a few steps has one, and it moves everything downstream of it): each of its
    steps starts from eager's state before that step, so a flip stays within its step, and up
    to a quarter of the steps may differ. A wrong weight, neuron or state layout differs at
    every step with input."""
    eager = fast = state
    failed = []
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            got, fast = step(frame, eager if forced else fast)
            want, eager = model.step(frame, eager)
            problem = _compare(got, want, fast, eager, atol, rtol, max_off)
            if problem is not None:
                failed.append(f"{problem} at step {i}")
                if not forced or len(failed) > len(frames) // 4:
                    return "; ".join(failed)
    return None


def _compare(got: Tensor, want: Tensor, fast: State, eager: State, atol: float, rtol: float,
             max_off: float) -> str | None:
    """What differs between one step's logits and states (`verify_step`), or None."""
    if got.shape != want.shape or not torch.allclose(got, want, rtol=rtol, atol=atol):
        return "logits differ"
    off = total = 0
    mine = dict(named_leaves(fast))
    for key, value in named_leaves(eager):
        other = mine.get(key)
        if other is None or other.shape != value.shape:
            return f"state {key!r} differs"
        off += int(((other - value).abs() > atol + rtol * value.abs()).sum())
        total += value.numel()
    if off > max_off * total:
        return f"state differs ({off} of {total} values)"
    return None
