"""How the command talks to its user: exit codes, one-line errors, progress bars on stderr, and
the argument types that turn a bad value into a one-line error."""

from __future__ import annotations

import argparse
import math
import os
import sys

PROG = "multitaskseg"
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 130


def print_error(message: str) -> None:
    """One readable line on stderr (messages are single sentences; keep them on one line)."""
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def progress_bar(description: str, total: float = 1.0, unit: str = "it"):
    """A tqdm bar on stderr and its ``progress(fraction, stage)`` callback (fraction of the whole
    run, 0..1); silent on non-zero ranks of a torchrun job."""
    from tqdm import tqdm

    quiet = os.environ.get("RANK", "0").strip() not in ("", "0")
    bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, disable=quiet, unit=unit,
               bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")

    def progress(fraction: float, stage: str) -> None:
        bar.n = fraction * total
        bar.set_description_str(f"{description}: {stage}", refresh=False)
        bar.refresh()

    return bar, progress


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's errors as the command's other errors: one line, exit 2 (usage stays in --help)."""

    def error(self, message: str):
        where = self.prog[len(PROG):].strip()
        hint = f" (see '{self.prog} --help')"
        print_error(f"{where + ': ' if where else ''}{message}{hint}")
        raise SystemExit(2)


# ---- argument types: each raises ArgumentTypeError with what the value must be ------------------


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (steps, sizes, counts)."""
    return _integer(text, 1, "must be a whole number of at least 1")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (seeds, indices, worker counts)."""
    return _integer(text, 0, "must be a whole number of at least 0")


def positive_float(text: str) -> float:
    """A finite number > 0 (spacings, learning rates, minutes)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value
