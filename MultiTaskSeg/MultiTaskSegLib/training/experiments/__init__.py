"""The paper's seven training experiments (section 3.2, Fig. 1), run and reported (section 4, Fig. 2).

The same network is trained for every combination of the three tasks, with as many output classes
as the combination needs (the tasks' backgrounds merged into class 0), and one experiment is run a
second time with another seed to show run-to-run variation.

"The same number of steps per task". The paper trains "25000 mini-batches per task" with
mini-batches of 210 samples "equally balanced over the tasks of the network", and plots its
learning curves against mini-batches per task. So a network of k tasks takes k times as many
mini-batches of the same size, each holding 1/k of its samples from every task: every task is
seen through the same number of samples whatever the experiment, and the x axes line up. Here a
mini-batch is ``blocks_per_batch`` dense blocks, ``blocks_per_batch / k`` of them per task
(hence a multiple of 6 when one-, two- and three-task experiments are run), and an experiment of
k tasks runs ``k * steps_per_task`` optimiser steps, validated every ``k * validate_every`` steps.

Outputs: per experiment a training folder (bundle, log, checkpoint, held-out report, its
``settings.json`` and, once finished, ``result.json``): running again with the same settings
reuses finished experiments and resumes an interrupted one from its checkpoint. Together: a JSON
file, a Markdown report and the learning-curve figure.
"""

from .catalog import EXPERIMENTS, Experiment, class_names_of, experiment
from .report import conclusions
from .running import run_experiments

__all__ = ["EXPERIMENTS", "Experiment", "class_names_of", "conclusions", "experiment", "run_experiments"]
