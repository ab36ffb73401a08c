"""Engines that run a model's `step` for streaming, behind one interface: `make_step` picks one."""

from spikestream.pipeline.engines.torchscript import (
    ENGINES,
    CompiledStep,
    compile_step,
    make_step,
    verify_step,
)

__all__ = ["ENGINES", "CompiledStep", "compile_step", "make_step", "verify_step"]
