"""Explicit layer state, owned by the caller: the time scan and nested state as named leaves.

Each stateful module owns its state: a neuron's is a tensor, an attention's a dict of its
parts, a block's a dict holding its attention's, the model's `{"stem": ..., "blocks": [...]}`
(nested dicts and lists of tensors, a pytree). Engines that need a flat list of tensors use
`torch.utils._pytree` on it; `named_leaves` gives the same leaves with dotted paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

#: A module's state: a tensor, or dicts and lists of states.
State = Any
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]


def scan(step: StepFn, state: State, x: Tensor) -> Tensor:
    """`step` over the leading time axis of `x[T, ...]` from `state`: the stacked outputs."""
    out = []
    for x_t in x:
        y, state = step(x_t, state)
        out.append(y)
    return torch.stack(out)


def named_leaves(state: State, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """The tensors of a nested state with dotted paths (`"blocks.0.attn.q"`), in the order
    `torch.utils._pytree.tree_leaves` gives them."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from named_leaves(value, f"{prefix}{key}.")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from named_leaves(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], state


def flat_state(state: State) -> dict[str, Tensor]:
    """`named_leaves` as a dict."""
    return dict(named_leaves(state))


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """The same nesting with `fn` applied to every tensor."""
    return pytree.tree_map(fn, state)


def state_nbytes(state: State) -> int:
    """Bytes held by the tensors of a state."""
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(state))
