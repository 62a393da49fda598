"""The worker process: runs the network for the Slicer logic, outside Slicer's process.

Started by :mod:`.worker_client` as ``<python> -u worker.py`` (Slicer's ``PythonSlicer`` inside
Slicer, ``sys.executable`` elsewhere), it imports torch and the engine once, then serves requests
read from stdin until stdin closes (see :mod:`.worker_protocol`). Why a process: Slicer's main
thread holds the GIL while Qt waits, so a Python thread computes only when the main thread runs
Python; and a CUDA fault, GPU memory, glibc heap tuning and torch's thread count stay here instead
of in the user's Slicer session. Cancel kills the process; nothing it leaves behind is read.

When the logic is gone (stdin closed, or its process died: ``--parent-pid``, checked every second)
the worker removes its folder (``--folder``) and ends with its whole process group: anything it
forked goes too (OpenVINO's telemetry did, on ``import openvino``; it is off in the worker).

Only the standard library is imported at module level: the path to the package is set up first.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

Send = Callable[[Dict[str, Any]], None]


def _put_package_on_path() -> None:
    """Run as a script, the script's own folder is ``sys.path[0]``: replace it by the folder that
    holds ``MultiTaskSegLib``, so ``MultiTaskSegLib.engine`` imports the engine beside this file."""
    here = os.path.dirname(os.path.abspath(__file__))
    module_dir = os.path.dirname(os.path.dirname(here))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)


class Worker:
    """Answers requests; keeps the loaded models between them (a second run skips the loading)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self._segmenters: Dict[tuple, Any] = {}

    def handle(self, request: Dict[str, Any]) -> None:
        from MultiTaskSegLib.engine.errors import MultiTaskSegError

        request_id = request.get("id")
        self.send({"event": "accepted", "id": request_id})
        handlers = {"describe": self.describe, "segment": self.segment, "segment_folder": self.segment_folder}
        try:
            handler = handlers.get(request.get("command"))
            if handler is None:
                raise ValueError(f"unknown command {request.get('command')!r}")
            answer = handler(request, lambda fraction, stage: self.send(
                {"event": "progress", "id": request_id, "fraction": float(fraction), "stage": str(stage)}))
            self.send(dict(answer, event="result", id=request_id))
        except MultiTaskSegError as error:
            self.send({"event": "error", "id": request_id, "kind": type(error).__name__, "message": str(error)})
        except MemoryError:
            self.send({"event": "error", "id": request_id, "kind": "MemoryError",
                       "message": "Not enough memory for this volume: close other programs, or crop or "
                                  "downsample the volume (Crop Volume module) and try again."})
        except Exception as error:  # a bug: the whole traceback goes to the log
            traceback.print_exc()
            self.send({"event": "error", "id": request_id, "kind": "unexpected",
                       "message": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
        finally:
            from MultiTaskSegLib.engine.heap import return_freed_memory_to_the_system

            return_freed_memory_to_the_system()  # an idle worker should not hold a volume's worth

    # ---- commands -----------------------------------------------------------------------

    def describe(self, request: Dict[str, Any], progress) -> Dict[str, Any]:
        """The torch found, the devices, and the model's classes (metadata only, no weights)."""
        import torch
        from MultiTaskSegLib.engine.bundle import bundle_from_metadata, default_model_path, read_metadata
        from MultiTaskSegLib.engine.devices import available_devices

        answer: Dict[str, Any] = {
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "devices": [list(device) for device in available_devices()],
        }
        from MultiTaskSegLib.engine.errors import MultiTaskSegError

        model = request.get("model")
        try:  # a bad model is the model's problem: PyTorch and the devices are still worth showing
            bundle = bundle_from_metadata(read_metadata(model), path=None)  # validated, weights untouched
        except MultiTaskSegError as error:
            answer["model_error"] = {"kind": type(error).__name__, "message": str(error)}
            return answer
        answer["model"] = {
            "path": str(model or default_model_path()),
            "classes": [info.to_json() for info in bundle.classes],
            "tasks": [task.to_json() for task in bundle.tasks],
            "thresholds": {str(index): value for index, value in bundle.default_thresholds.items()},
        }
        return answer

    def _segmenter(self, model: Optional[str], device: str, progress):
        from MultiTaskSegLib.engine.bundle import default_model_path, load_bundle
        from MultiTaskSegLib.engine.segmenter import Segmenter

        path = os.path.abspath(model) if model else str(default_model_path())
        stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else None  # a rewritten file reloads
        key = (path, stamp, device)
        if key not in self._segmenters:
            progress(0.0, "Loading the model")
            self._segmenters.clear()  # one model at a time: each holds its weights on the device
            self._segmenters[key] = Segmenter(load_bundle(model), device=device)
        return self._segmenters[key]

    def segment(self, request: Dict[str, Any], progress) -> Dict[str, Any]:
        """Probability maps of the volume in ``request["input"]``, written to ``request["output"]``."""
        import numpy as np
        from MultiTaskSegLib.engine.geometry import Volume
        from MultiTaskSegLib.engine.progress import sub_progress

        started = time.perf_counter()
        segmenter = self._segmenter(request.get("model"), request.get("device") or "auto", progress)
        loaded = time.perf_counter()
        geometry = request["geometry"]
        volume = Volume(np.load(request["input"]), tuple(geometry["spacing"]), tuple(geometry["origin"]),
                        np.asarray(geometry["direction"], dtype=float))
        network_progress = sub_progress(progress, 0.0, 0.97)
        maps = segmenter.predict(volume, classes=request.get("classes"), progress=lambda fraction, stage: (
            network_progress(fraction, stage) if stage != "Done" else None))  # the logic says when it is done
        del volume
        predicted = time.perf_counter()
        progress(0.97, "Writing the probabilities")
        output = request["output"]
        partial = output + ".partial.npy"  # renamed when complete: the logic never reads half a file
        np.save(partial, maps.data)
        os.replace(partial, output)
        return {
            "output": output,
            "shape": list(maps.data.shape),
            "selected": list(maps.selected),
            "device": segmenter.device_description,
            "seconds": {"model": round(loaded - started, 3), "network": round(predicted - loaded, 3),
                        "write": round(time.perf_counter() - predicted, 3)},
        }

    def segment_folder(self, request: Dict[str, Any], progress) -> Dict[str, Any]:
        """Every image file of a folder into ``<name>.seg.nrrd`` files (engine.batch, as the CLI)."""
        from pathlib import Path

        from MultiTaskSegLib.engine.batch import check_outputs, image_files_in, make_output_folders, plan_jobs, run_jobs
        from MultiTaskSegLib.engine.file_types import SEGMENTATION_SUFFIX

        segmenter = self._segmenter(request.get("model"), request.get("device") or "auto", progress)
        selected = segmenter.selected_classes(request.get("classes"))
        jobs = plan_jobs(image_files_in(Path(request["input_dir"])), Path(os.path.join(request["output_dir"], "")),
                         SEGMENTATION_SUFFIX.lstrip("."))
        overwrite = bool(request.get("overwrite"))
        check_outputs(jobs, overwrite)  # before the first case, so a batch does not stop half-way
        make_output_folders(jobs)
        thresholds = {segmenter.bundle.class_index(key): float(value)
                      for key, value in (request.get("thresholds") or {}).items()}
        run_jobs(jobs, segmenter, selected, thresholds, overwrite, stop_on_error=True, progress=progress)
        return {"written": [str(job.output) for job in jobs]}


def _read_requests(requests: "queue.Queue[str]", end: Callable[[], None]) -> None:
    """Stdin to the queue. End of stdin means the logic is gone or cancelled: stop at once, even
    mid-run (this also ends a worker whose Slicer crashed, and one behind a launcher that a kill
    did not reach). A stdin that cannot be read is a logic lost too: never serve on, deaf."""
    try:
        for line in sys.stdin:
            requests.put(line)
    except BaseException:
        traceback.print_exc()
    end()


def _ender(folder: Optional[str], own_group: bool) -> Callable[[], None]:
    """How the worker ends when its logic is gone: nobody else is left to remove ``folder`` (its
    inputs and outputs), and ``os._exit`` alone would leave running what the worker forked (a
    fork keeps the command line: it looks like a worker). ``own_group``: the client started us
    in a session of our own (or our launcher's), so the group holds nothing else."""
    def end() -> None:
        if folder:
            try:
                os.chdir(os.path.dirname(folder))  # Windows cannot remove a process's current folder
            except OSError:
                pass
            shutil.rmtree(folder, ignore_errors=True)
        if own_group:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # this process included
        os._exit(0)
    return end


def _parent_alive_check(parent_pid: Optional[int]) -> Optional[Callable[[], bool]]:
    """A test of whether the logic's process still runs; None where none can be made.

    Stdin's end of file misses two cases: a process forked by the logic still holds the pipe's
    write end, or a launcher between us (Slicer's ``PythonSlicer``) keeps a stdin of its own open.
    POSIX: reparenting (``getppid()`` changes) means our parent died; ``parent_pid`` (the logic,
    perhaps behind a launcher) is probed with signal 0 (a reused pid would read as alive: stdin's
    end of file still applies). Windows never reparents and ``os.kill(pid, 0)`` there would
    terminate the process: a handle to the logic opened now is waited on instead."""
    if os.name != "nt":
        started_under = os.getppid()

        def alive() -> bool:
            if os.getppid() != started_under:
                return False
            if parent_pid is None or parent_pid == started_under:
                return True
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                return False
            except OSError:  # PermissionError: it exists
                pass
            return True
        return alive
    try:
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.OpenProcess.restype = wintypes.HANDLE
        kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
        kernel32.WaitForSingleObject.restype = wintypes.DWORD
        kernel32.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
        synchronize, wait_object_0, error_invalid_parameter = 0x00100000, 0, 87
        handle = kernel32.OpenProcess(synchronize, False, parent_pid or os.getppid())
        if not handle:  # no such process: it is gone already; otherwise we may not watch it
            return (lambda: False) if ctypes.get_last_error() == error_invalid_parameter else None
        return lambda: kernel32.WaitForSingleObject(handle, 0) != wait_object_0
    except (OSError, AttributeError, ValueError):
        return None  # stdin's end of file is the only signal left


def _watch_parent(alive: Callable[[], bool], end: Callable[[], None], interval: float = 1.0) -> None:
    while alive():
        time.sleep(interval)
    end()


def _check_torch(send: Send, minimum: str) -> bool:
    """Import torch; a missing, broken or too old one is a fatal event with what to do."""
    try:
        import torch
    except Exception as error:  # ImportError, or OSError from a DLL that does not load
        send({"event": "fatal", "kind": "torch", "message": (
            f"PyTorch cannot be imported in Slicer's Python ({type(error).__name__}: {error}). "
            "Reinstall it: MultiTaskSeg panel > Reinstall PyTorch, or the PyTorch extension's module.")})
        return False
    from MultiTaskSegLib.slicer.dependencies import version_tuple

    if version_tuple(torch.__version__) < version_tuple(minimum):
        send({"event": "fatal", "kind": "torch", "message": (
            f"PyTorch {torch.__version__} is too old: MultiTaskSeg needs {minimum} or newer. "
            "Update it: MultiTaskSeg panel > Reinstall PyTorch.")})
        return False
    return True


def _arguments(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MultiTaskSeg's worker process (started by the Slicer logic).")
    parser.add_argument("--parent-pid", type=int, help="the logic's process: the worker ends when it does")
    parser.add_argument("--folder", help="the worker's temporary folder, removed when the logic is gone")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    entered = time.time()
    arguments = _arguments(argv)
    _put_package_on_path()
    # `import openvino` (the CPU backend) sends telemetry from a forked child of the worker that,
    # offline (hospital networks), never ends by itself: such children outlived their workers.
    # OpenVINO falls back to its own no-op stub when the package does not import.
    sys.modules.setdefault("openvino_telemetry", None)
    # Events go to the real stdout; everything else printed (Python, torch, C libraries) to stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    from MultiTaskSegLib.slicer import worker_protocol
    from MultiTaskSegLib.slicer.dependencies import TORCH_MINIMUM_VERSION

    def send(message: Dict[str, Any]) -> None:
        with lock:
            protocol.write(worker_protocol.encode(message))
            protocol.flush()

    requests: "queue.Queue[str]" = queue.Queue()
    # The client (--parent-pid) starts us, or our launcher, leading a new session: our group is ours.
    own_group = False
    if arguments.parent_pid is not None and os.name != "nt":
        session = os.getsid(0)
        own_group = os.getpgrp() == session and session in (os.getpid(), os.getppid())
    end = _ender(arguments.folder, own_group)
    threading.Thread(target=_read_requests, args=(requests, end), name="requests", daemon=True).start()
    alive = _parent_alive_check(arguments.parent_pid) if arguments.parent_pid is not None else None
    if alive is not None:
        threading.Thread(target=_watch_parent, args=(alive, end), name="parent", daemon=True).start()
    if not _check_torch(send, TORCH_MINIMUM_VERSION):
        return 1
    imported_torch = time.time()
    import MultiTaskSegLib.engine.segmenter  # noqa: F401  (the engine's imports, paid before the first run)

    send({"event": "ready", "pid": os.getpid(), "protocol": worker_protocol.PROTOCOL_VERSION,
          "python": sys.version.split()[0], "entered": entered, "torch_imported": imported_torch,
          "engine_imported": time.time()})
    worker = Worker(send)
    while True:
        message = worker_protocol.decode(requests.get(), key="command")
        if message.get("command") == "quit":
            return 0
        if message.get("event") == "log":  # not a request: say so, never guess
            send({"event": "error", "id": None, "kind": "protocol", "message": f"not a request: {message['text']!r}"})
            continue
        worker.handle(message)


if __name__ == "__main__":
    sys.exit(main())
