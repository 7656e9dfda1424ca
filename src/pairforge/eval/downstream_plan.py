"""The downstream experiment's run plan: which (condition, budget, seed) runs train on how many
real crops and synthetic pairs, and how many epochs every one of them gets."""

from __future__ import annotations

import math
from typing import NamedTuple

CONDITIONS = ("real", "synthetic", "mixed")


class PlannedRun(NamedTuple):
    """One training run: condition, budget label ('8' | 'all'), seed (of the budget and of the
    segmenter: the pairing of the comparisons), and how many real crops (the budget's fit
    tiles) and synthetic pairs it trains on."""

    condition: str
    budget: str
    seed: int
    n_real: int
    n_synthetic: int


def plan_runs(config, data) -> tuple[list[PlannedRun], list[str]]:
    """The runs of a `DownstreamConfig` on `DownstreamData` (budgets and their sets drawn).

    Every run of one (budget, seed) reads the labels of that budget only: real crops are its
    fit tiles, model selection its select tiles, and the synthetic set the one generated from
    it. Returns (runs in training order: per seed and budget real, synthetic, mixed; notes
    naming each (condition, budget) that wanted more synthetic pairs than its set has).
    """
    plan: list[PlannedRun] = []
    notes: list[str] = []
    for seed in config.seeds:
        for size in config.budgets:
            key = (str(size), seed)
            n_real = len(data.budgets[key].fit_tiles) * data.crops_per_tile()
            synthetic = data.sets.get(key)
            available = 0 if synthetic is None else synthetic.available
            fraction = config.synthetic_fraction
            wanted = {
                "real": 0,
                "synthetic": config.max_synthetic or available,
                "mixed": round(n_real * fraction / (1.0 - fraction)),
            }
            for condition in CONDITIONS:
                if condition not in config.conditions:
                    continue
                if wanted[condition] > available:
                    notes.append(
                        f"{condition} budget {size} seed {seed}: {wanted[condition]} synthetic "
                        f"pairs wanted, {available} exist in {synthetic.path}"
                    )
                plan.append(
                    PlannedRun(
                        condition,
                        str(size),
                        seed,
                        0 if condition == "synthetic" else n_real,
                        min(wanted[condition], available),
                    )
                )
    return plan, notes


def epochs_for(steps: int, num_samples: int, batch_size: int) -> int:
    """Epochs of `num_samples` in batches of `batch_size` that make at least `steps` steps."""
    return max(1, math.ceil(steps / math.ceil(num_samples / batch_size)))
