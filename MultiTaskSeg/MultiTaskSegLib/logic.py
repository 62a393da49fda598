"""The documented console entry point ``from MultiTaskSegLib.logic import MultiTaskSegLogic``;
the logic itself lives in :mod:`MultiTaskSegLib.slicer.logic`."""

from .slicer.logic import MultiTaskSegLogic, volume_from_node

__all__ = ["MultiTaskSegLogic", "volume_from_node"]
