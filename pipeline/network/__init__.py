"""The spiking vision transformer: neurons, attention mechanisms, the model and its configs."""

from spikestream.pipeline.network.configs import CONFIGS, create_model, get_config, list_configs
from spikestream.pipeline.network.model import SpikingTransformer
from spikestream.pipeline.network.neurons import LIF, TernaryLIF
from spikestream.pipeline.network.reference import export_reference, import_reference
from spikestream.pipeline.network.state import flat_state, scan, state_nbytes

__all__ = [
    "CONFIGS",
    "LIF",
    "SpikingTransformer",
    "TernaryLIF",
    "create_model",
    "export_reference",
    "import_reference",
    "get_config",
    "list_configs",
    "flat_state",
    "scan",
    "state_nbytes",
]
