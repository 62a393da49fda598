"""The ``multitaskseg`` command: its parser and ``main``; each command lives in its own module.

Each subcommand is a pair of small functions, ``_add_<name>(subparsers)`` that declares its
arguments and ``_run_<name>(args) -> int`` that runs it; each command module lists its ``_add_``
functions in ``SUBCOMMANDS``, and ``COMMAND_MODULES`` below lists the modules.

Exit codes: 0 success; 1 some inputs of a batch failed (the others were written); 2 a usage error
or a problem the user can fix (one line ``multitaskseg: error: ...``, no traceback), and any other
failure (a library's exception is one line too; MULTITASKSEG_DEBUG=1 shows its traceback); 130
cancelled with Ctrl-C, 128 + N stopped by signal N (SIGTERM, SIGHUP): outputs are written
atomically and the signal interrupts like Ctrl-C, so no half-written or temporary file is left.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional, Sequence

from .. import __version__
from ..engine.environment import check_environment
from ..engine.errors import Cancelled, MultiTaskSegError
from . import data_commands, demo, info_command, segment_command, training_commands
from .console import EXIT_CANCELLED, EXIT_ERROR, PROG, OneLineArgumentParser, print_error

# In the order ``multitaskseg --help`` lists them.
COMMAND_MODULES = (info_command, segment_command, data_commands, training_commands, demo)
DEBUG_ENV_VAR = "MULTITASKSEG_DEBUG"
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so every cleanup (``finally``, the atomic
    writer's removal of its temporary file) runs as it does for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Stopped`` while the command runs (main thread only: Python
    delivers signals there); the previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _raise_stopped) for number in _STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 must print too
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the error line, or usage or help
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    with _signals_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, with every exception turned into one line and an exit code."""
    try:
        check_environment()
        return args.run(args)
    except Cancelled as error:
        print_error(str(error))
        return EXIT_CANCELLED
    except MultiTaskSegError as error:
        print_error(str(error))
        return EXIT_ERROR
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        print(f"\n{PROG}: stopped by {name}; no half-written output was left behind.", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"\n{PROG}: cancelled; no half-written output was left behind.", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as error:  # the libraries' own exceptions: one line, not a traceback
        if os.environ.get(DEBUG_ENV_VAR, "").strip() not in ("", "0"):
            raise
        print_error(describe_unexpected(error))
        return EXIT_ERROR


def describe_unexpected(error: BaseException) -> str:
    """One line for an exception that is not one of the project's: a file system error names the
    file and the reason, memory exhaustion says so, anything else gives its type and message."""
    if isinstance(error, MemoryError):
        return ("out of memory: the image or the model needs more memory than is free. Crop or downsample "
                "the image, or close other programs.")
    if isinstance(error, OSError):
        where = f"{error.filename!s}: " if error.filename is not None else ""
        return f"{where}{error.strerror or error}."
    text = " ".join(str(error).split())[:300]
    return (f"unexpected {type(error).__name__}: {text or 'no message'} (this may be a bug: rerun with "
            f"{DEBUG_ENV_VAR}=1 for the traceback and report it).")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="One multi-task triplanar CNN (Moeskops et al. 2017) for brain tissues in T1 MRI, "
                    "the pectoral muscle in breast MRI and the coronary arteries in cardiac CTA.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        for add in module.SUBCOMMANDS:
            add(subparsers)
    return parser
