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
                atol: float = 1e-5, rtol: float = 0.0, max_off: float = 0.0) -> str | None:
    """Run `step` and eager `model.step` side by side over `frames` from `state` (both in the
    model's state layout); returns None when every step's logits agree within
    `atol + rtol * |eager|` and so do its state tensors, all but a fraction `max_off` of
    their values (an engine that sums in another order may see a membrane within rounding of
    its threshold fire where eager does not), else what differed."""
    eager = fast = state
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            want, eager = model.step(frame, eager)
            got, fast = step(frame, fast)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=rtol, atol=atol):
                return f"logits differ at step {i}"
            off = total = 0
            mine = dict(named_leaves(fast))
            for key, value in named_leaves(eager):
                other = mine.get(key)
                if other is None or other.shape != value.shape:
                    return f"state {key!r} differs at step {i}"
                off += int(((other - value).abs() > atol + rtol * value.abs()).sum())
                total += value.numel()
            if off > max_off * total:
                return f"state differs at step {i} ({off} of {total} values)"
    return None
