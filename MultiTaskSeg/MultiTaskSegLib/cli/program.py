"""The ``multitaskseg`` command: segment images in batch, show a model bundle, build training data;
the model-side commands (train, evaluate, experiments, demo) are in training_commands.py.

Each subcommand is a pair of small functions, ``_add_<name>(subparsers)`` that declares its
arguments and ``_run_<name>(args) -> int`` that runs it; ``SUBCOMMANDS`` lists the ``_add_``
functions, so adding a command means adding two functions and one entry.

Exit codes: 0 success; 1 some inputs of a batch failed (the others were written); 2 a usage error
or a problem the user can fix (one line ``multitaskseg: error: ...``, no traceback); 130 cancelled
with Ctrl-C (outputs are written atomically, so no half-written file is left).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from ..engine.errors import Cancelled, MultiTaskSegError
from . import data_commands, demo, info_command, segment_command, training_commands
from .console import EXIT_CANCELLED, EXIT_ERROR, PROG, print_error

# In the order ``multitaskseg --help`` lists them.
COMMAND_MODULES = (info_command, segment_command, data_commands, training_commands, demo)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage or help already
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    try:
        return args.run(args)
    except Cancelled as error:
        print_error(str(error))
        return EXIT_CANCELLED
    except MultiTaskSegError as error:
        print_error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\n{PROG}: cancelled; no half-written output was left behind.", file=sys.stderr)
        return EXIT_CANCELLED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One multi-task triplanar CNN (Moeskops et al. 2017) for brain tissues in T1 MRI, "
                    "the pectoral muscle in breast MRI and the coronary arteries in cardiac CTA.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        for add in module.SUBCOMMANDS:
            add(subparsers)
    return parser
