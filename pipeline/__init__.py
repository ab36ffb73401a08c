"""`spikestream.pipeline`: neurons, attention mechanisms and the spiking vision transformer."""

from spikestream.pipeline.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    load_for_inference,
    resolve_checkpoint,
    save_checkpoint,
)
from spikestream.pipeline.compiled import ENGINES, make_step
from spikestream.pipeline.configs import CONFIGS, create_model, get_config, list_configs
from spikestream.pipeline.model import SpikingTransformer, state_nbytes
from spikestream.pipeline.neurons import LIF, TernaryLIF
from spikestream.pipeline.recipe import InputRecipe

__all__ = [
    "CONFIGS",
    "ENGINES",
    "InputRecipe",
    "LIF",
    "LoadedCheckpoint",
    "SpikingTransformer",
    "TernaryLIF",
    "create_model",
    "get_config",
    "list_configs",
    "load_checkpoint",
    "load_for_inference",
    "make_step",
    "resolve_checkpoint",
    "save_checkpoint",
    "state_nbytes",
]
