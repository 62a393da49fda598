"""How the logic and its worker process talk: one JSON object per line, both ways.

Requests go to the worker's stdin, one line each (``{"command": "segment", "id": ..., ...}``);
closing stdin stops the worker at once, whatever it is doing. Events come back on the worker's
stdout, which the logic sends to a file and reads as it grows (no pipe can fill up and block the
worker, and no thread is needed to read it: Slicer's main thread holds the GIL while Qt waits).
The worker's stderr, where Python, torch and the engine print, goes to a log file beside it.

Bulk data goes through files in a temporary folder: the input voxels and the uint8 probability
maps as ``.npy`` (exact, uncompressed, any dtype; no ITK writer in the way).

Stdlib only: the worker imports this before torch.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

PROTOCOL_VERSION = 1
EVENTS_FILE = "events.jsonl"
LOG_FILE = "worker-log.txt"
INPUT_FILE = "input.npy"
PROBABILITIES_FILE = "probabilities.npy"

# events
READY = "ready"  # torch and the engine are imported: requests are served from now on
ACCEPTED = "accepted"  # a request was read
PROGRESS = "progress"  # fraction, stage
RESULT = "result"  # the request's answer
ERROR = "error"  # the request failed: kind, message (the worker goes on serving)
FATAL = "fatal"  # the worker cannot serve at all (e.g. torch missing): kind, message; it exits


def encode(message: Dict[str, Any]) -> str:
    """One line of the protocol (NaN and infinities are refused: JSON has none)."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n"


def decode(line: str, key: str = "event") -> Dict[str, Any]:
    """The message of a line (an event, or with ``key="command"`` a request); a line that is not a
    JSON object with that key becomes a ``log`` event: printed text, never guessed at."""
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict) or key not in message:
        return {"event": "log", "text": line.rstrip("\n")}
    return message


class FileTail:
    """The complete lines appended to a file since the last read (a partial last line waits)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_lines(self) -> List[str]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the data ended with a newline
        return [line.decode("utf-8", errors="replace") for line in lines if line.strip()]
