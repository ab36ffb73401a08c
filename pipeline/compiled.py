"""A TorchScript copy of a model's `step` for streaming: same operations, less Python per step.

`compile_step(model, example_frame)` traces `model.step` (state as a flat tuple of tensors in
the fixed key order of `model.init_state`), freezes it (parameters become constants), and
checks at construction that it reproduces eager `model.step` over a few steps: states within
`atol` and logits within `atol` (1e-5). Candidates are tried in order (frozen trace, plain
trace); if none matches, or tracing fails, the returned step is eager `model.step`, with a
warning. `CompiledStep.mode` says which one runs ("frozen", "traced" or "eager").

A trace is specialised to the frame shape it saw (batch included) and to the weights at
construction (frozen); compile again after changing either. The result has `init_state`,
`step` and the model's `num_classes`, `input_size` and `in_channels`, so it can stand in for
the model wherever only stepping is needed (`pipeline.streaming.run_stream`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["CompiledStep", "compile_step", "verify_step"]

State = dict[str, Tensor]
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]


class _FlatStep(torch.nn.Module):
    """`model.step` as a function of (frame, *state tensors) -> (logits, *state tensors)."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, frame: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model.step(frame, dict(zip(self.keys, values, strict=True)))
        return (logits, *(new[k] for k in self.keys))


def _check_frames(example_frame: Tensor, steps: int, seed: int) -> list[Tensor]:
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
                atol: float = 1e-5) -> str | None:
    """Run `step` and eager `model.step` side by side over `frames` from `state`; returns
    None when every step's logits and state agree within `atol`, else what differed."""
    eager, fast = dict(state), dict(state)
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            want, eager = model.step(frame, eager)
            got, fast = step(frame, fast)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=0, atol=atol):
                return f"logits differ at step {i}"
            for key, value in eager.items():
                other = fast.get(key)
                if (other is None or other.shape != value.shape
                        or not torch.allclose(other, value, rtol=0, atol=atol)):
                    return f"state {key!r} differs at step {i}"
    return None


class CompiledStep:
    """A step function with the model's stepping interface (`init_state`, `step`)."""

    def __init__(self, model: Any, fn: torch.jit.ScriptModule | None, keys: Sequence[str],
                 frame_shape: tuple[int, ...], mode: str) -> None:
        self.model = model
        self.mode = mode
        self.keys = list(keys)
        self.frame_shape = tuple(frame_shape)
        self._fn = fn
        self.num_classes = getattr(model, "num_classes", None)
        self.input_size = getattr(model, "input_size", None)
        self.in_channels = getattr(model, "in_channels", None)

    def init_state(self, batch: int, *args: Any, **kwargs: Any) -> State:
        return self.model.init_state(batch, *args, **kwargs)

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """One timestep: `frame` (the shape compiled for) -> `(logits, new state)`."""
        if self._fn is None:
            return self.model.step(frame, state)
        if tuple(frame.shape) != self.frame_shape:
            raise ValueError(f"compiled step expects frames of shape {self.frame_shape}, "
                             f"got {tuple(frame.shape)}")
        out = self._fn(frame, *(state[k] for k in self.keys))
        return out[0], dict(zip(self.keys, out[1:], strict=True))

    __call__ = step


def compile_step(model: torch.nn.Module, example_frame: Tensor, *, freeze: bool = True,
                 check_steps: int = 8, atol: float = 1e-5, seed: int = 0) -> CompiledStep:
    """Trace (and freeze) `model.step` for frames shaped like `example_frame[B, P, H, W]`.

    The model is put in eval mode. The traced step is kept only if it matches eager
    `model.step` over `check_steps` steps (the example frame, then random sparse frames);
    otherwise the returned step is eager, with a `RuntimeWarning` saying why.
    """
    model.eval()
    state = model.init_state(example_frame.shape[0])
    keys = list(state)
    frames = _check_frames(example_frame, check_steps, seed)
    reasons = []
    for mode in (("frozen", "traced") if freeze else ("traced",)):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings on Python control flow
                fn = torch.jit.trace(_FlatStep(model, keys).eval(),
                                     (example_frame, *state.values()), check_trace=False)
                if mode == "frozen":
                    fn = torch.jit.freeze(fn)
        except Exception as e:  # noqa: BLE001  (any tracing failure: try the next, then eager)
            reasons.append(f"{mode}: tracing failed ({type(e).__name__}: {e})")
            continue
        compiled = CompiledStep(model, fn, keys, tuple(example_frame.shape), mode)
        problem = verify_step(model, compiled.step, frames, state, atol)
        if problem is None:
            return compiled
        reasons.append(f"{mode}: {problem}")
    warnings.warn("compiled step does not reproduce model.step (" + "; ".join(reasons)
                  + "); using eager model.step", RuntimeWarning, stacklevel=2)
    return CompiledStep(model, None, keys, tuple(example_frame.shape), "eager")
