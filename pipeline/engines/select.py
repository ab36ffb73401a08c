"""`make_step`: the engine a caller names, built and checked against eager `model.step`.

Engines (`ENGINES`): `numba` runs the whole step as event-driven numba kernels
(`engines.numba_step`, for the attention mechanisms with a numba entry,
`engines.numba_attention.NUMBA_ATTENTION`); `torchscript` is a frozen TorchScript trace of
`model.step` (`engines.torchscript`); `eager` is `model.step` itself; `auto` is `numba` where
the model is supported, else `torchscript`. Every fast engine is checked against eager
`model.step` over a few steps when it is built and falls back (numba -> torchscript -> eager)
with a warning if it differs. `auto` passes quietly over a model the numba kernels do not
cover. Every engine has `init_state`, `step` and `mode`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from spikestream.pipeline.engines.torchscript import compile_step, eager_step
from spikestream.pipeline.engines.verify import check_frames, verify_step

ENGINES = ("auto", "numba", "torchscript", "eager")


def make_step(model: torch.nn.Module, example_frame: Tensor, engine: str = "auto", *,
              check_steps: int = 8, atol: float = 1e-5, seed: int = 0) -> Any:
    """The step `engine` names (module docstring) for frames like `example_frame[B, P, H, W]`,
    checked against eager `model.step` over `check_steps` steps: a trace to `atol`, the
    numba step to 1e-4 relative and absolute, all but 0.1% of the membranes, each of its steps
    from eager's state and up to a quarter of them excused (`verify_step`, `forced`: it sums in
    another order, so a membrane within rounding of its threshold may fire in one and not the
    other).
    The result has `mode` ("numba", "frozen", "traced" or "eager"), `init_state(1)` and
    `step`; its state is its own (a numba step's is one flat array:
    `NumbaStep.to_model_state` converts it)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    model.eval()
    if engine == "eager":
        return eager_step(model, example_frame)
    if engine in ("auto", "numba"):
        from spikestream.pipeline.engines.numba_step import NumbaStep, unsupported

        reason = unsupported(model)
        if reason is None and example_frame.shape[0] != 1:
            reason = f"it runs batch 1, not {example_frame.shape[0]}"
        differs = False
        if reason is None:
            fast = NumbaStep(model)

            def model_layout_step(frame: Tensor, state: Any) -> tuple[Tensor, Any]:
                logits, new = fast.step(frame, fast.from_model_state(state))
                return logits, fast.to_model_state(new)

            # sums in another order: agreement to rounding, relative to the values' size
            reason = verify_step(model, model_layout_step,
                                 check_frames(example_frame, check_steps, seed),
                                 model.init_state(1), atol=1e-4, rtol=1e-4, max_off=1e-3,
                                 forced=True)
            if reason is None:
                return fast
            differs = True
        if engine == "numba" or differs:  # `auto` moves on quietly past unsupported models
            warnings.warn(f"numba step not used ({reason}); using TorchScript", RuntimeWarning,
                          stacklevel=2)
    return compile_step(model, example_frame, check_steps=check_steps, atol=atol, seed=seed)
