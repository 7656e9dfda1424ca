"""The downstream experiment's run plan: which (condition, budget, seed) runs train on how many
real crops and synthetic pairs, and how many epochs every one of them gets."""

from __future__ import annotations

import math
from typing import NamedTuple

CONDITIONS = ("real", "synthetic", "mixed")


class PlannedRun(NamedTuple):
    """One training run of the experiment: condition, label budget (None: synthetic-only),
    seed, and how many real crops and synthetic pairs it trains on."""

    condition: str
    budget: int | None
    seed: int
    n_real: int
    n_synthetic: int


def plan_runs(config, available: int) -> tuple[list[PlannedRun], list[str]]:
    """The runs of a `DownstreamConfig`, synthetic counts capped by the `available` pairs.

    Returns (runs in training order: per seed the synthetic-only run, then per budget real and
    mixed; notes naming each (condition, budget) that wanted more synthetic pairs than exist).
    """
    plan: list[PlannedRun] = []
    for seed in config.seeds:
        if "synthetic" in config.conditions:
            wanted = config.max_synthetic or available
            plan.append(PlannedRun("synthetic", None, seed, 0, wanted))
        for budget in config.budgets:
            if "real" in config.conditions:
                plan.append(PlannedRun("real", budget, seed, budget, 0))
            if "mixed" in config.conditions:
                fraction = config.synthetic_fraction
                wanted = round(budget * fraction / (1.0 - fraction))
                plan.append(PlannedRun("mixed", budget, seed, budget, wanted))
    notes = []
    for run in plan:
        note = (
            f"{run.condition} budget {run.budget}: {run.n_synthetic} synthetic pairs wanted, "
            f"{available} exist"
        )
        if run.n_synthetic > available and note not in notes:
            notes.append(note)
    return [run._replace(n_synthetic=min(run.n_synthetic, available)) for run in plan], notes


def epochs_for(steps: int, num_samples: int, batch_size: int) -> int:
    """Epochs of `num_samples` in batches of `batch_size` that make at least `steps` steps."""
    return max(1, math.ceil(steps / math.ceil(num_samples / batch_size)))
