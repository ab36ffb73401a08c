"""Pluggable spiking self-attention mechanisms, registered by key (see DESIGN.md)."""

from spikestream.pipeline.network.attention import (  # noqa: F401  (importing registers the keys)
    a2os2a,
    lrf_dyn,
    lrf_ssa,
    sdsa,
    ssa,
    sssa,
    statten,
)
from spikestream.pipeline.network.attention.base import (
    ATTENTION,
    Attention,
    State,
    create_attention,
    register_attention,
)
from spikestream.pipeline.network.attention.local import LocalRF
from spikestream.pipeline.network.layers import TokenBN, TokenLIF, TokenProj

__all__ = [
    "ATTENTION",
    "Attention",
    "LocalRF",
    "State",
    "TokenBN",
    "TokenLIF",
    "TokenProj",
    "create_attention",
    "register_attention",
]
