"""`spikestream.pipeline`: neurons, attention mechanisms and the spiking vision transformer."""

from spikestream.pipeline.checkpoint import load_checkpoint, save_checkpoint
from spikestream.pipeline.configs import CONFIGS, create_model, get_config, list_configs
from spikestream.pipeline.model import SpikingTransformer, state_nbytes
from spikestream.pipeline.neurons import LIF, TernaryLIF

__all__ = [
    "CONFIGS",
    "LIF",
    "SpikingTransformer",
    "TernaryLIF",
    "create_model",
    "get_config",
    "list_configs",
    "load_checkpoint",
    "save_checkpoint",
    "state_nbytes",
]
