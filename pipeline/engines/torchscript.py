"""Fast copies of a model's `step` for streaming, checked against it: `make_step` picks one.

Engines (`ENGINES`): `numba` runs the whole step as event-driven numba kernels
(`pipeline.numba_step`, for the attention mechanisms it supports); `torchscript` is a frozen
TorchScript trace of `model.step` (the same ATen operations, less Python per step); `eager`
is `model.step` itself; `auto` is `numba` where the model is supported, else `torchscript`.
Every fast engine is checked against eager `model.step` over a few steps when it is built
and falls back (numba -> torchscript -> eager) with a warning if it differs. `auto` passes
quietly over a model the numba kernels do not cover.

TorchScript:

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

__all__ = ["ENGINES", "CompiledStep", "compile_step", "make_step", "verify_step"]

ENGINES = ("auto", "numba", "torchscript", "eager")

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
                atol: float = 1e-5, rtol: float = 0.0, max_off: float = 0.0) -> str | None:
    """Run `step` and eager `model.step` side by side over `frames` from `state`; returns
    None when every step's logits agree within `atol + rtol * |eager|` and so do its state
    tensors, all but a fraction `max_off` of their values (an engine that sums in another
    order may see a membrane within rounding of its threshold fire where eager does not),
    else what differed."""
    eager, fast = dict(state), dict(state)
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            want, eager = model.step(frame, eager)
            got, fast = step(frame, fast)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=rtol, atol=atol):
                return f"logits differ at step {i}"
            off = total = 0
            for key, value in eager.items():
                other = fast.get(key)
                if other is None or other.shape != value.shape:
                    return f"state {key!r} differs at step {i}"
                off += int(((other - value).abs() > atol + rtol * value.abs()).sum())
                total += value.numel()
            if off > max_off * total:
                return f"state differs at step {i} ({off} of {total} values)"
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


def make_step(model: torch.nn.Module, example_frame: Tensor, engine: str = "auto", *,
              check_steps: int = 8, atol: float = 1e-5, seed: int = 0) -> Any:
    """The step `engine` names (module docstring) for frames like `example_frame[B, P, H, W]`,
    checked against eager `model.step` over `check_steps` steps: a trace to `atol`, the
    numba step to 1e-4 relative and absolute, all but 0.1% of the membranes (`verify_step`).
    The result has `mode` ("numba", "frozen", "traced" or "eager"), `init_state(1)` and
    `step`; its state is its own (a numba step's is one flat array:
    `NumbaStep.to_model_state` converts it)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    model.eval()
    if engine == "eager":
        keys = list(model.init_state(example_frame.shape[0]))
        return CompiledStep(model, None, keys, tuple(example_frame.shape), "eager")
    if engine in ("auto", "numba"):
        from spikestream.pipeline.engines.numba_step import NumbaStep, unsupported

        reason = unsupported(model)
        if reason is None and example_frame.shape[0] != 1:
            reason = f"it runs batch 1, not {example_frame.shape[0]}"
        differs = False
        if reason is None:
            fast = NumbaStep(model)

            def flat_step(frame: Tensor, state: State) -> tuple[Tensor, State]:
                logits, new = fast.step(frame, fast.from_model_state(state))
                return logits, fast.to_model_state(new)

            # sums in another order: agreement to rounding, relative to the values' size
            reason = verify_step(model, flat_step, _check_frames(example_frame, check_steps, seed),
                                 model.init_state(1), atol=1e-4, rtol=1e-4, max_off=1e-3)
            if reason is None:
                return fast
            differs = True
        if engine == "numba" or differs:  # `auto` moves on quietly past unsupported models
            warnings.warn(f"numba step not used ({reason}); using TorchScript", RuntimeWarning,
                          stacklevel=2)
    return compile_step(model, example_frame, check_steps=check_steps, atol=atol, seed=seed)
