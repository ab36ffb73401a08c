"""`spikestream.pipeline`: the network (`network/`), its engines (`engines/`), binning,
streaming, training and evaluation."""

from spikestream.pipeline.checkpoint import load_checkpoint, save_checkpoint
from spikestream.pipeline.engines import ENGINES, make_step
from spikestream.pipeline.network import (
    CONFIGS,
    LIF,
    SpikingTransformer,
    TernaryLIF,
    create_model,
    get_config,
    list_configs,
    state_nbytes,
)

__all__ = [
    "CONFIGS",
    "ENGINES",
    "LIF",
    "SpikingTransformer",
    "TernaryLIF",
    "create_model",
    "get_config",
    "list_configs",
    "load_checkpoint",
    "make_step",
    "save_checkpoint",
    "state_nbytes",
]
