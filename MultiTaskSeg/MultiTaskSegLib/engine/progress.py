"""Progress reporting and cancellation shared by every long-running engine function.

A progress callback is ``progress(fraction, stage)`` with ``fraction`` in [0, 1] and a
short human-readable ``stage``; a cancel check is a no-argument callable returning True
when the user asked to stop. Both are optional everywhere.
"""

from typing import Callable, Optional

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


def report(progress: Optional[ProgressCallback], fraction: float, stage: str) -> None:
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), stage)


def check_cancel(cancel: Optional[CancelCheck]) -> None:
    """Raise Cancelled if the user asked to stop; call between units of work."""
    if cancel is not None and cancel():
        raise Cancelled("Cancelled by the user; nothing was written.")


def sub_progress(progress: Optional[ProgressCallback], start: float, end: float) -> Optional[ProgressCallback]:
    """A callback mapping [0, 1] of a sub-step onto [start, end] of the parent's range."""
    if progress is None:
        return None

    def scaled(fraction: float, stage: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), stage)

    return scaled
