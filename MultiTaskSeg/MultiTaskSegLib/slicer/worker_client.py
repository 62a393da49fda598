"""The logic's side of the worker process: start it, send requests, read its events, kill it.

Nothing here blocks: :meth:`WorkerProcess.poll` reads what the worker wrote since the last call,
so Slicer's widget can call it from a ``qt.QTimer`` and the console's blocking ``segment()`` from a
loop. One worker serves one request at a time and stays alive between them (the torch import and
the model loading are paid once per session; figures in docs/slicer.md). Cancel kills it, with
its launcher and children, and removes its folder; the next request starts a new one.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..engine.errors import MultiTaskSegError
from . import worker_protocol as protocol

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
PYTHON_ENV_VAR = "MULTITASKSEG_WORKER_PYTHON"
LOG_TAIL_LINES = 12

Log = Callable[[str], None]


class WorkerError(MultiTaskSegError):
    """The worker process could not start, died, or reported a bug; ``details`` has its log."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def worker_python() -> str:
    """The Python that runs the worker: Slicer's ``PythonSlicer`` inside Slicer (Slicer's own
    Python, its packages, its environment), this interpreter elsewhere."""
    override = os.environ.get(PYTHON_ENV_VAR)
    if override:
        return override
    try:
        import slicer

        app = getattr(slicer, "app", None)  # absent outside Slicer (the slicer-core wheel)
    except ImportError:
        app = None
    if app is None:
        return sys.executable
    found = shutil.which("PythonSlicer")  # Slicer puts its bin folder on PATH
    if found:
        return found
    candidate = os.path.join(app.slicerHome, "bin", "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    if os.path.exists(candidate):
        return candidate
    raise WorkerError(f"Slicer's Python (PythonSlicer) was not found in {os.path.dirname(candidate)}: "
                      "reinstall Slicer, or set MULTITASKSEG_WORKER_PYTHON to a Python with torch.")


def describe_exit(returncode: Optional[int]) -> str:
    """How a process ended, in words a user can act on."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the system's out-of-memory killer sends this)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    if os.name == "nt" and returncode >= 0xC0000000:
        return f"crashed with Windows error 0x{returncode:08X}"
    return f"exit code {returncode}"


def _kill_process_tree(process: subprocess.Popen) -> None:
    """Kill the worker and whatever it started. Inside Slicer ``PythonSlicer`` is a launcher that
    runs the real Python as its child, so killing the launcher alone would leave the network
    running: on POSIX the worker leads its own process group; on Windows taskkill /T walks the tree.
    On POSIX the group is killed even when the worker has just ended (closing its stdin ends it
    at once): what it forked (OpenVINO's telemetry does) may still be in the group. Not once it
    was reaped: its pid may belong to another process by then."""
    if process.returncode is not None or (os.name == "nt" and process.poll() is not None):
        return
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            os.killpg(process.pid, signal.SIGKILL)
    except (OSError, subprocess.SubprocessError):
        pass
    if process.poll() is None:
        process.kill()


def _remove_folder(folder: str) -> None:
    """Remove ``folder``; on Windows a just-killed process may hold its files for a moment."""
    for _ in range(20):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.025)


class Request:
    """One request to the worker and what came back; :meth:`poll` it until :attr:`finished`."""

    def __init__(self, worker: "WorkerProcess", request_id: str, message: Dict[str, Any]) -> None:
        self.worker = worker
        self.process = worker.process  # the process that got it: a restarted worker never answers it
        self.id = request_id
        self.message = message
        self.accepted = False
        self.answer: Optional[Dict[str, Any]] = None
        self.error: Optional[Exception] = None
        self.cancelled = False

    @property
    def finished(self) -> bool:
        return self.answer is not None or self.error is not None or self.cancelled

    def poll(self) -> List[Tuple[float, str]]:
        """Progress (fraction, stage) reported since the last poll; sets answer or error at the end."""
        if self.finished:
            return []
        progress: List[Tuple[float, str]] = []
        self._take(self.worker.poll_request(self.id), progress)
        if not self.finished and (self.process is not self.worker.process or self.process.poll() is not None):
            self._take(self.worker.poll_request(self.id), progress)  # what it wrote just before it ended
            if not self.finished:
                self.error = self.worker.death_error(self.process.returncode)
        if self.finished:
            self.worker.done(self.id)
        return progress

    def _take(self, events: List[Dict[str, Any]], progress: List[Tuple[float, str]]) -> None:
        for event in events:
            kind = event.get("event")
            if kind == protocol.ACCEPTED:
                self.accepted = True
            elif kind == protocol.PROGRESS:
                progress.append((float(event["fraction"]), str(event["stage"])))
            elif kind == protocol.RESULT:
                self.answer = event
            elif kind == protocol.ERROR:
                self.error = error_from_event(event, self.worker.log_tail())

    def cancel(self) -> None:
        """Kill the worker (the request dies with it); its files are removed."""
        if not self.finished:
            self.cancelled = True
            self.worker.stop()
            self.worker.done(self.id)

    def wait(self, progress: Optional[Callable[[float, str], None]] = None,
             cancel: Optional[Callable[[], bool]] = None, interval: float = 0.02) -> Dict[str, Any]:
        """Block until the answer; raise the request's error. ``cancel()`` true: kill, raise Cancelled."""
        from ..engine.errors import Cancelled

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
        return self.answer


def error_from_event(event: Dict[str, Any], log_tail: str = "") -> Exception:
    """The exception a worker's error event stands for: the engine's own types keep their type."""
    from ..engine import errors

    message = str(event.get("message", "unknown error"))
    kind = event.get("kind")
    known = getattr(errors, str(kind), None)
    if isinstance(known, type) and issubclass(known, errors.MultiTaskSegError):
        return known(message)
    if kind == "MemoryError":
        return errors.InputError(message)
    details = str(event.get("traceback") or "") + ("\n" + log_tail if log_tail else "")
    return WorkerError(f"The segmentation process failed: {message} (a bug: please report it with the log).",
                       details)


class WorkerProcess:
    """One worker process, started on the first request and kept until :meth:`stop`.

    ``log`` gets every line the worker prints (torch's warnings, tracebacks) and the stages it
    reports, for the panel's log area.
    """

    _ids = itertools.count(1)

    def __init__(self, python: Optional[str] = None, log: Optional[Log] = None) -> None:
        self.python = python
        self.log = log
        self.process: Optional[subprocess.Popen] = None
        self.folder: Optional[str] = None
        self.ready: Optional[Dict[str, Any]] = None  # the worker's "ready" event
        self.started_at: Optional[float] = None
        self.last_activity = 0.0  # time.time() of the last request sent or event read
        self._fatal: Optional[Dict[str, Any]] = None
        self._events: Optional[protocol.FileTail] = None
        self._log_tail: Optional[protocol.FileTail] = None
        self._recent_log: List[str] = []
        self._pending: Dict[str, List[Dict[str, Any]]] = {}
        self._files: List[Any] = []

    # ---- lifetime ------------------------------------------------------------------------

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start the worker (returns at once; it imports torch meanwhile and then serves)."""
        self.stop()
        self.folder = tempfile.mkdtemp(prefix="MultiTaskSeg-")
        events_path = os.path.join(self.folder, protocol.EVENTS_FILE)
        log_path = os.path.join(self.folder, protocol.LOG_FILE)
        stdout, stderr = open(events_path, "wb"), open(log_path, "wb")
        self._files = [stdout, stderr]
        options: Dict[str, Any] = {}
        if os.name == "nt":
            options["creationflags"] = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
                                        | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        else:
            options["start_new_session"] = True  # its own process group: one kill reaches the launcher's child
        # Our pid and the folder: a worker whose logic died (even with its stdin held open
        # elsewhere) removes the folder and ends (worker.py).
        command = [self.python or worker_python(), "-u", WORKER_SCRIPT, "--parent-pid", str(os.getpid()),
                   "--folder", self.folder]
        self.started_at = self.last_activity = time.time()
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
                                            cwd=self.folder, **options)
        except OSError as error:
            self.stop()
            raise WorkerError(f"Could not start the segmentation process {command[0]}: {error}.") from None
        self._events = protocol.FileTail(events_path)
        self._log_tail = protocol.FileTail(log_path)
        self.ready, self._fatal, self._pending, self._recent_log = None, None, {}, []
        _live_workers.add(self)

    def stop(self) -> None:
        """Kill the worker and its children now, and remove its folder (inputs, outputs, logs)."""
        process, self.process = self.process, None
        if process is not None:
            try:
                process.stdin.close()  # the worker's stdin thread ends the process on this too
            except OSError:
                pass
            _kill_process_tree(process)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for stream in self._files:
            stream.close()
        self._files = []
        if self.folder is not None:
            _remove_folder(self.folder)
            self.folder = None
        _live_workers.discard(self)

    # ---- requests ------------------------------------------------------------------------

    def request_folder(self, request_id: str) -> str:
        """A folder for one request's files, inside the worker's (removed with it)."""
        if not self.running():
            self.start()
        folder = os.path.join(self.folder, request_id)
        os.makedirs(folder, exist_ok=True)
        return folder

    def new_id(self, command: str) -> str:
        return f"{command}-{next(self._ids)}"

    def send(self, command: str, request_id: Optional[str] = None, **fields: Any) -> Request:
        """Send a request (starting the worker when none runs); returns it, to poll."""
        if not self.running():
            self.start()
        request_id = request_id or self.new_id(command)
        message = dict(fields, command=command, id=request_id)
        self._pending[request_id] = []
        self.last_activity = time.time()
        try:
            self.process.stdin.write(protocol.encode(message).encode("utf-8"))
            self.process.stdin.flush()
        except OSError:
            pass  # the worker died: the request's poll reports how
        return Request(self, request_id, message)

    def poll(self) -> None:
        """Read what the worker wrote since the last call and file it by request."""
        if self._events is None:
            return
        for line in self._log_tail.read_lines():
            self._recent_log = (self._recent_log + [line])[-LOG_TAIL_LINES:]
            if self.log:
                self.log(line)
        for line in self._events.read_lines():
            self.last_activity = time.time()
            event = protocol.decode(line)
            kind = event.get("event")
            if kind == protocol.READY:
                self.ready = event
            elif kind == protocol.FATAL:
                self._fatal = event
                if self.log:
                    self.log(event.get("message", ""))
            elif kind == "log" and self.log:
                self.log(event["text"])
            elif event.get("id") in self._pending:
                self._pending[event["id"]].append(event)
                if kind == protocol.PROGRESS and self.log:
                    self.log(f"{event['fraction']:4.0%}  {event['stage']}")

    def poll_request(self, request_id: str) -> List[Dict[str, Any]]:
        self.poll()
        events = self._pending.get(request_id, [])
        if request_id in self._pending:
            self._pending[request_id] = []
        return events

    def done(self, request_id: str) -> None:
        """A request is answered (or dead): its events are no longer kept."""
        self._pending.pop(request_id, None)

    @property
    def busy(self) -> bool:
        """A request was sent and is not answered yet."""
        return bool(self._pending)

    def stop_if_idle(self, seconds: float) -> bool:
        """Stop a worker that has served nothing for ``seconds``: it holds torch, the model (on the
        GPU too) and a few hundred MB of memory. The next request starts a new one."""
        if self.running() and not self.busy and time.time() - self.last_activity > seconds:
            self.stop()
            return True
        return False

    def log_tail(self) -> str:
        return "\n".join(self._recent_log)

    def death_error(self, returncode: Optional[int]) -> WorkerError:
        """Why the worker is gone, for a request it did not answer."""
        self.poll()  # its last words
        if self._fatal is not None:
            return WorkerError(str(self._fatal.get("message")), self.log_tail())
        how = describe_exit(returncode)
        return WorkerError(
            f"The segmentation process stopped unexpectedly ({how}); the scene is unchanged. "
            "If the volume is large, close other programs or crop the volume (Crop Volume module); "
            "the log shows the process's last output.", self.log_tail())


# Workers still alive when Python exits are killed (Slicer's exit also closes their stdin).
_live_workers: "weakref.WeakSet[WorkerProcess]" = weakref.WeakSet()


@atexit.register
def _stop_live_workers() -> None:
    for worker in list(_live_workers):
        worker.stop()
