"""The catalog of the paper's experiments: which tasks each trains, and names and colours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ...engine.classes import DEFAULT_CLASSES
from ...engine.errors import InputError


# The paper's training setting, for the report's "reduced versus the paper" table.
PAPER = {"steps_per_task": 25000, "n_layers": 25, "validate_every": 1000, "samples_per_batch": 210,
         "train_test_images": {"brain": "14/20", "breast": "14/20", "coronary": "6/4"}}


@dataclass(frozen=True)
class Experiment:
    number: int
    tasks: Tuple[str, ...]
    color: str  # line colour in the figures, one per experiment as in the paper's Figs. 1-2

    @property
    def label(self) -> str:
        return f"{self.number}: {' + '.join(self.tasks)}"


EXPERIMENTS: Tuple[Experiment, ...] = (
    Experiment(1, ("brain",), "#1f77b4"),
    Experiment(2, ("breast",), "#ff7f0e"),
    Experiment(3, ("coronary",), "#2ca02c"),
    Experiment(4, ("brain", "breast"), "#d62728"),
    Experiment(5, ("brain", "coronary"), "#9467bd"),
    Experiment(6, ("breast", "coronary"), "#8c564b"),
    Experiment(7, ("brain", "breast", "coronary"), "#e377c2"),
)
REPEAT_SEED_OFFSET = 1000  # the repeated run differs from the original only in its seed
# A difference counts as beyond run-to-run variation only above this many times the repeat's difference:
# one repeat difference is itself a single draw of the noise, so a tighter bar would call chance a result.
NOISE_FACTOR = 2.0


def experiment(number: int) -> Experiment:
    for e in EXPERIMENTS:
        if e.number == number:
            return e
    raise InputError(f"There is no experiment {number}; the paper's experiments are numbered 1 to {len(EXPERIMENTS)}.")


def run_name(e: Experiment, repeat: bool) -> str:
    return f"experiment{e.number}" + ("_repeat" if repeat else "")


def class_names_of(tasks: Sequence[str]) -> List[str]:
    """The classes (without background) a network of these tasks has, in the default order."""
    return [c.name for c in DEFAULT_CLASSES if c.task in tasks]


def task_of_class(name: str) -> str:
    return next(c.task for c in DEFAULT_CLASSES if c.name == name)
