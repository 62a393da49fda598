"""One segmentation run, from a volume to probability maps, and the model it runs.

:class:`WorkerRun` sends the volume to the worker process and reads the maps back;
:class:`InProcessRun` calls a segmenter in this process (tests and benchmarks pass fakes). Both
are polled the same way, so the widget's timer and the console's blocking ``segment()`` share them.
No MRML here: the logic makes the nodes once a run has its maps.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.classes import ClassInfo, TaskInfo
from ..engine.errors import Cancelled
from ..engine.geometry import Volume
from ..engine.labelmap_rule import ProbabilityMaps
from . import worker_protocol as protocol
from .worker_client import Request, WorkerProcess

Progress = List[Tuple[float, str]]


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What the panel and the logic need of a model without its weights."""

    classes: Tuple[ClassInfo, ...]
    tasks: Tuple[TaskInfo, ...]
    default_thresholds: Dict[int, float]
    path: str = ""

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "ModelDescription":
        return cls(tuple(ClassInfo.from_json(c) for c in data["classes"]),
                   tuple(TaskInfo.from_json(t) for t in data["tasks"]),
                   {int(index): float(value) for index, value in (data.get("thresholds") or {}).items()},
                   str(data.get("path") or ""))

    @classmethod
    def from_bundle(cls, bundle) -> "ModelDescription":
        return cls(tuple(bundle.classes), tuple(getattr(bundle, "tasks", ()) or ()),
                   dict(getattr(bundle, "default_thresholds", {}) or {}), str(getattr(bundle, "path", "") or ""))


class SegmentationRun:
    """Base: :meth:`start`, then :meth:`poll` until :attr:`finished`; :attr:`maps` or :attr:`error`."""

    def __init__(self) -> None:
        self.maps: Optional[ProbabilityMaps] = None
        self.error: Optional[Exception] = None
        self.cancelled = False
        self.device = ""  # where the network ran
        self.seconds: Dict[str, float] = {}

    @property
    def finished(self) -> bool:
        return self.maps is not None or self.error is not None or self.cancelled

    def start(self) -> "SegmentationRun":
        raise NotImplementedError

    def poll(self) -> Progress:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def wait(self, progress: Optional[Callable[[float, str], None]] = None,
             cancel: Optional[Callable[[], bool]] = None, interval: float = 0.02) -> ProbabilityMaps:
        """Block until the maps are there; raise the run's error, or Cancelled when ``cancel()``."""
        self._cancel_check = cancel
        while not self.finished:
            if cancel is not None and cancel():
                self.cancel()
                break
            for fraction, stage in self.poll():
                if progress is not None:
                    progress(fraction, stage)
            if not self.finished:
                time.sleep(interval)
        if self.cancelled:
            raise Cancelled("Cancelled by the user; nothing was written.")
        if self.error is not None:
            raise self.error
        return self.maps


class WorkerRun(SegmentationRun):
    """The network in the worker process; the volume goes there as ``.npy``, the maps come back so."""

    def __init__(self, worker: WorkerProcess, volume: Volume, classes: Optional[Sequence[str]],
                 model: Optional[str], device: str, description: Callable[[], ModelDescription]) -> None:
        super().__init__()
        self.worker = worker
        self.volume = volume
        self.request_fields = {"classes": list(classes) if classes is not None else None, "model": model,
                               "device": device}
        self._description = description  # the model's classes, to interpret the maps
        self.request: Optional[Request] = None
        self.folder: Optional[str] = None

    def start(self) -> "WorkerRun":
        request_id = self.worker.new_id("segment")
        self.folder = self.worker.request_folder(request_id)
        input_path = os.path.join(self.folder, protocol.INPUT_FILE)
        np.save(input_path, np.ascontiguousarray(self.volume.array))
        self.request = self.worker.send(
            "segment", request_id, input=input_path, output=os.path.join(self.folder, protocol.PROBABILITIES_FILE),
            geometry={"spacing": list(self.volume.spacing), "origin": list(self.volume.origin),
                      "direction": np.asarray(self.volume.direction).tolist()},
            **self.request_fields)
        self.volume = None  # the worker has it; the node keeps the voxels
        return self

    def poll(self) -> Progress:
        if self.finished or self.request is None:
            return []
        progress = self.request.poll()
        if self.request.answer is not None:
            try:
                self._read_answer(self.request.answer)
            except Exception as error:  # unreadable output: an error like any other, scene unchanged
                self.error = error
            self._remove_files()
        elif self.request.error is not None:
            self.error = self.request.error
            self._remove_files()
        return progress

    def _read_answer(self, answer: Dict[str, Any]) -> None:
        data = np.load(answer["output"])  # read fully: the file is removed right after
        model = self._description()
        self.maps = ProbabilityMaps(data, model.classes, answer["selected"], model.default_thresholds)
        self.device = str(answer.get("device", ""))
        self.seconds = dict(answer.get("seconds") or {})

    def cancel(self) -> None:
        """Kill the worker now (the next run starts a new one); its files go with it."""
        if not self.finished:
            self.cancelled = True
            if self.request is not None:
                self.request.cancel()
            self._remove_files()

    def _remove_files(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class InProcessRun(SegmentationRun):
    """``segmenter.predict`` in this process, at the first poll (blocking): for tests and benchmarks."""

    def __init__(self, segmenter, volume: Volume, classes: Optional[Sequence[str]]) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.volume = volume
        self.classes = classes
        self._started = False
        self._cancel_check: Optional[Callable[[], bool]] = None

    def start(self) -> "InProcessRun":
        self._started = True
        return self

    def poll(self) -> Progress:
        if self.finished or not self._started:
            return []
        progress: Progress = []
        try:
            self.maps = self.segmenter.predict(self.volume, classes=self.classes,
                                               progress=lambda fraction, stage: progress.append((fraction, stage)),
                                               cancel=self._cancel_check)
        except Cancelled:
            self.cancelled = True
        except Exception as error:
            self.error = error
        self.volume = None
        return progress

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled = True
