"""The environment variables the engine reads, in one place, each validated with a message.

A typo in a variable (``MULTITASKSEG_THREADS=eight``) must be a one-line error saying which
variable and what it takes, not a traceback from deep inside a run.
"""

from __future__ import annotations

import os
from typing import Optional

from .errors import InputError

MODEL = "MULTITASKSEG_MODEL"                  # the model used when none is given
THREADS = "MULTITASKSEG_THREADS"              # CPU threads for the network (default: one per core)
MEMORY_BUDGET = "MULTITASKSEG_MEMORY_BUDGET"  # bytes one slab of the dense pass may use (0: measured)

_MAX_THREADS = 4096
_MAX_MEMORY_BUDGET = 2 ** 50  # a petabyte: beyond it the value is a typo


def integer_from_environment(name: str, minimum: int, maximum: int, what: str) -> Optional[int]:
    """The whole number in ``$name`` (None when unset or empty); InputError when it is not a
    whole number in ``minimum..maximum``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise InputError(f"The environment variable {name}={text!r} must be {what}, a whole number in "
                         f"{minimum}..{maximum}; fix it or unset it.")
    return value


def thread_count() -> Optional[int]:
    """$MULTITASKSEG_THREADS, or None when unset."""
    return integer_from_environment(THREADS, 1, _MAX_THREADS, "the number of CPU threads")


def memory_budget_bytes() -> int:
    """$MULTITASKSEG_MEMORY_BUDGET in bytes; 0 (unset) lets each slab measure the free memory."""
    value = integer_from_environment(MEMORY_BUDGET, 0, _MAX_MEMORY_BUDGET,
                                     "a memory budget in bytes (e.g. 4000000000; 0: measure the free memory)")
    return value or 0


def check_environment() -> None:
    """Validate every variable up front (the command calls this before it starts work)."""
    thread_count()
    memory_budget_bytes()
