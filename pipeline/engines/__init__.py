"""Engines that run a model's `step` for streaming, behind one interface (`init_state`,
`step`, `mode`): eager, TorchScript and numba; `make_step` builds the one asked for and checks
it against eager `model.step`."""

from spikestream.pipeline.engines.select import ENGINES, make_step
from spikestream.pipeline.engines.torchscript import CompiledStep, compile_step, eager_step
from spikestream.pipeline.engines.verify import check_frames, verify_step

__all__ = ["ENGINES", "CompiledStep", "check_frames", "compile_step", "eager_step", "make_step",
           "verify_step"]
