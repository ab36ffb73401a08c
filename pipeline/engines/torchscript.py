"""The TorchScript engine: a frozen trace of `model.step`, checked against it when built.

`compile_step(model, example_frame)` traces `model.step` with its nested state flattened to
tensors (`torch.utils._pytree`), freezes it (parameters become constants), and checks at
construction that it reproduces eager `model.step` over a few steps: states and logits
within `atol` (1e-5). Candidates are tried in order (frozen trace, plain trace); if none
matches, or tracing fails, the returned step is eager `model.step`, with a warning.
`CompiledStep.mode` says which one runs ("frozen", "traced" or "eager").

A trace is specialised to the frame shape it saw (batch included) and to the weights at
construction (frozen); compile again after changing either. The result has `init_state`,
`step` and the model's `num_classes`, `input_size` and `in_channels`, so it can stand in for
the model wherever only stepping is needed (`pipeline.streaming.run_stream`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from spikestream.pipeline.engines.verify import check_frames, verify_step
from spikestream.pipeline.network.state import State


class _FlatStep(torch.nn.Module):
    """`model.step` as a function of (frame, *state leaves) -> (logits, *state leaves)."""

    def __init__(self, model: torch.nn.Module, spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, frame: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
        logits, new = self.model.step(frame, pytree.tree_unflatten(list(leaves), self.spec))
        return (logits, *pytree.tree_leaves(new))


class CompiledStep:
    """A step function with the model's stepping interface (`init_state`, `step`, `mode`);
    `fn=None` is eager `model.step`."""

    def __init__(self, model: Any, fn: torch.jit.ScriptModule | None, spec: pytree.TreeSpec,
                 frame_shape: tuple[int, ...], mode: str) -> None:
        self.model = model
        self.mode = mode
        self.spec = spec
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
        leaves, spec = pytree.tree_flatten(state)
        if spec != self.spec:
            raise ValueError("compiled step got a state of another layout than init_state's")
        out = self._fn(frame, *leaves)
        return out[0], pytree.tree_unflatten(list(out[1:]), self.spec)

    __call__ = step


def eager_step(model: Any, example_frame: Tensor) -> CompiledStep:
    """`model.step` itself behind the engine interface."""
    spec = pytree.tree_structure(model.init_state(example_frame.shape[0]))
    return CompiledStep(model, None, spec, tuple(example_frame.shape), "eager")


def compile_step(model: torch.nn.Module, example_frame: Tensor, *, freeze: bool = True,
                 check_steps: int = 8, atol: float = 1e-5, seed: int = 0) -> CompiledStep:
    """Trace (and freeze) `model.step` for frames shaped like `example_frame[B, P, H, W]`.

    The model is put in eval mode. The traced step is kept only if it matches eager
    `model.step` over `check_steps` steps (the example frame, then random sparse frames);
    otherwise the returned step is eager, with a `RuntimeWarning` saying why.
    """
    model.eval()
    state = model.init_state(example_frame.shape[0])
    leaves, spec = pytree.tree_flatten(state)
    frames = check_frames(example_frame, check_steps, seed)
    reasons = []
    for mode in (("frozen", "traced") if freeze else ("traced",)):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings on Python control flow
                fn = torch.jit.trace(_FlatStep(model, spec).eval(), (example_frame, *leaves),
                                     check_trace=False)
                if mode == "frozen":
                    fn = torch.jit.freeze(fn)
        except Exception as e:  # noqa: BLE001  (any tracing failure: try the next, then eager)
            reasons.append(f"{mode}: tracing failed ({type(e).__name__}: {e})")
            continue
        compiled = CompiledStep(model, fn, spec, tuple(example_frame.shape), mode)
        problem = verify_step(model, compiled.step, frames, state, atol)
        if problem is None:
            return compiled
        reasons.append(f"{mode}: {problem}")
    warnings.warn("compiled step does not reproduce model.step (" + "; ".join(reasons)
                  + "); using eager model.step", RuntimeWarning, stacklevel=2)
    return CompiledStep(model, None, spec, tuple(example_frame.shape), "eager")
