"""What a threshold change needs, kept per segmentation node object, never per node ID.

``vtkMRMLScene::Clear`` (File > Close Scene) resets the scene's ID counters, so the first
segmentation node made after it gets the ID of the first one before it. A result keyed by ID would
then belong to a node that never saw it: its sliders would show, and moving one would overwrite the
new node with the closed scene's labels. Results here are found by the node object itself (``is``),
and dropped when the node leaves its scene (removal or scene close).

The store holds the node's Python object, so VTK hands back that same object for the node while the
entry lives, and the C++ node cannot be freed and its address reused meanwhile.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import vtk
from vtk.util.misc import calldata_type


@dataclasses.dataclass
class SegmentationResult:
    """One run's output as the segmentation node shows it."""

    maps: Any  # engine.labelmap_rule.ProbabilityMaps
    labelmap: Any  # vtkOrientedImageData shared by all our segments (label value = class index)
    segment_ids: Dict[int, str]  # class index -> segment ID
    thresholds: Dict[int, float]  # by class index, as last applied
    ijk_to_ras: np.ndarray
    device: str = ""  # where the network ran, as the worker described it


class ResultStore:
    """Results by segmentation node object; forgets a node when it leaves its scene.

    Scene events arrive while the scene is being destroyed too, when touching it (even asking a
    node for its scene) crashes: the store keeps a weak reference per scene and compares objects
    by identity only.
    """

    def __init__(self) -> None:
        self._entries: List[Tuple[Any, Any, SegmentationResult]] = []  # (node, weakref to its scene, result)
        self._scenes: List[Tuple[Any, List[int]]] = []  # (weakref to a scene, its observer tags)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, node, result: SegmentationResult) -> None:
        """Keep ``result`` for ``node`` (a node in a scene), replacing an earlier one."""
        scene = node.GetScene()
        if scene is None:
            raise ValueError("Only a node in a scene can have a result.")
        self.drop(node)
        self._entries.append((node, self._observe(scene), result))

    def get(self, node) -> Optional[SegmentationResult]:
        """The result of this very node object, or None (another node, or it left its scene)."""
        for kept, sceneRef, result in self._entries:
            if kept is node:
                scene = sceneRef()
                if scene is None or not scene.IsNodePresent(node):
                    self.drop(node)
                    return None
                return result
        return None

    def drop(self, node) -> None:
        self._entries = [entry for entry in self._entries if entry[0] is not node]

    def clear(self) -> None:
        """Forget every result and stop observing scenes."""
        self._entries = []
        for sceneRef, tags in self._scenes:
            scene = sceneRef()
            for tag in tags if scene is not None else ():
                scene.RemoveObserver(tag)
        self._scenes = []

    def _observe(self, scene):
        """The weak reference that stands for ``scene`` (observing it on first use)."""
        self._scenes = [(ref, tags) for ref, tags in self._scenes if ref() is not None]
        for sceneRef, _ in self._scenes:
            if sceneRef() is scene:
                return sceneRef
        sceneRef = weakref.ref(scene)
        store = weakref.ref(self)  # the scene's observers must not keep the store alive

        @calldata_type(vtk.VTK_OBJECT)
        def on_node_removed(caller, event, node) -> None:
            if store() is not None and node is not None:
                store().drop(node)

        def on_scene_closing(caller, event) -> None:
            # Clear() also fires NodeRemovedEvent per node; dropping the scene's entries at the
            # start of the close covers nodes whose removal is batched, and a scene being destroyed.
            if store() is not None:
                store()._entries = [entry for entry in store()._entries
                                    if entry[1] is not sceneRef and entry[1]() is not None]

        tags = [scene.AddObserver(scene.NodeRemovedEvent, on_node_removed),
                scene.AddObserver(scene.StartCloseEvent, on_scene_closing)]
        self._scenes.append((sceneRef, tags))
        return sceneRef
