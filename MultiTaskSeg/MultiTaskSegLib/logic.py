"""The documented console entry point ``from MultiTaskSegLib.logic import MultiTaskSegLogic``.

``MultiTaskSegLogic`` here is :class:`MultiTaskSegLib.slicer.logic.SegmentationLogic`, the MRML
logic without Slicer's GUI; the Slicer module's own ``MultiTaskSeg.MultiTaskSegLogic`` extends it
with the module's parameter node, so both names give the same segment/update_thresholds API.
"""

from .slicer.logic import SegmentationLogic, volume_from_node

MultiTaskSegLogic = SegmentationLogic

__all__ = ["MultiTaskSegLogic", "SegmentationLogic", "volume_from_node"]
