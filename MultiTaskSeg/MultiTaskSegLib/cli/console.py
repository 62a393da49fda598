"""How the command talks to its user: exit codes, one-line errors, progress bars on stderr."""

from __future__ import annotations

import os
import sys

PROG = "multitaskseg"
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 130


def print_error(message: str) -> None:
    """One readable line on stderr (messages are single sentences; keep them on one line)."""
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def progress_bar(description: str, total: float = 1.0, unit: str = "it"):
    """A tqdm bar on stderr and its ``progress(fraction, stage)`` callback (fraction of the whole
    run, 0..1); silent on non-zero ranks of a torchrun job."""
    from tqdm import tqdm

    quiet = int(os.environ.get("RANK", "0")) != 0
    bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, disable=quiet, unit=unit,
               bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]")

    def progress(fraction: float, stage: str) -> None:
        bar.n = fraction * total
        bar.set_description_str(f"{description}: {stage}", refresh=False)
        bar.refresh()

    return bar, progress
