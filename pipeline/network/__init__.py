"""The spiking vision transformer: neurons, attention mechanisms, the model and its configs."""

from spikestream.pipeline.network.configs import CONFIGS, create_model, get_config, list_configs
from spikestream.pipeline.network.model import SpikingTransformer, state_nbytes
from spikestream.pipeline.network.neurons import LIF, TernaryLIF

__all__ = [
    "CONFIGS",
    "LIF",
    "SpikingTransformer",
    "TernaryLIF",
    "create_model",
    "get_config",
    "list_configs",
    "state_nbytes",
]
