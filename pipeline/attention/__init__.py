"""Pluggable spiking self-attention mechanisms, registered by key (see DESIGN.md)."""

from spikestream.pipeline.attention.base import (
    ATTENTION,
    Attention,
    State,
    TokenBN,
    TokenLIF,
    TokenProj,
    create_attention,
    register_attention,
)

__all__ = [
    "ATTENTION",
    "Attention",
    "State",
    "TokenBN",
    "TokenLIF",
    "TokenProj",
    "create_attention",
    "register_attention",
]
