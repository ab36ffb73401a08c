"""`spikestream.pipeline`: the network (`network/`), its engines (`engines/`), binning,
streaming, training and evaluation."""

from spikestream.pipeline.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    load_for_inference,
    resolve_checkpoint,
    save_checkpoint,
)
from spikestream.pipeline.engines import ENGINES, make_step
from spikestream.pipeline.network import (
    CONFIGS,
    LIF,
    SpikingTransformer,
    TernaryLIF,
    create_model,
    export_reference,
    get_config,
    import_reference,
    list_configs,
    state_nbytes,
)
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
    "export_reference",
    "get_config",
    "import_reference",
    "list_configs",
    "load_checkpoint",
    "load_for_inference",
    "make_step",
    "resolve_checkpoint",
    "save_checkpoint",
    "state_nbytes",
]
