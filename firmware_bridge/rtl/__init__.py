"""The LRF-Dyn integer core as synthesizable RTL (Amaranth): `LRFDynCoreRTL`.

Needs the `rtl` extra (`pip install spikestream[rtl]`); `report` synthesizes it for an iCE40.
"""

from spikestream.firmware_bridge.rtl.core import LRFDynCoreRTL

__all__ = ["LRFDynCoreRTL"]
