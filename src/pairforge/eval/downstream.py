"""Downstream experiment: does a segmenter get better when synthetic pairs join its training data?

Protocol (DESIGN.md, "Label budgets"): one segmenter recipe (`pairforge.core.supervised`) is
trained on real-only, synthetic-only and real + synthetic data at several label budgets and
seeds. At (budget B, seed s) every figure reads the labels of one budget only,
`make_budget(real, B, s, tile, label split)`: the real training crops are its fit tiles, the
best epoch is chosen on its select tiles (none: fixed schedule, last epoch), and the synthetic
set is the one whose generators read exactly its tiles (checked from manifest.json). The
selected model is scored once on tiles of the held-out test measurements. Reported: mean +- std
over seeds and, per budget, the paired difference of mixed / synthetic-only against real-only
(same budget, same segmenter seed) with its 95 % t interval.

Synthetic pairs are read as they are (already at model resolution) and normalized with the real
dataset's normalizer so that both share one value range. Every run trains for the same number
of optimizer steps with the same number of selection checkpoints, so a bigger (mixed) training
set is not also a longer training, nor one with more chances to be selected.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from pairforge.errors import PairforgeError
from pairforge.eval.downstream_data import DownstreamData, load_real_data
from pairforge.eval.downstream_plan import CONDITIONS, epochs_for, plan_runs
from pairforge.eval.downstream_summary import (
    compare_conditions,
    summarize_runs,
    write_downstream,
)
from pairforge.eval.downstream_train import train_planned_run

# The experiment's entry points (its parts live in downstream_plan, _data, _sets, _train,
# _summary, _plot).
__all__ = ["DownstreamConfig", "run_downstream", "summarize_runs", "write_downstream"]


class DownstreamConfig(BaseModel):
    """Settings of one downstream experiment (all recorded in downstream.json).

    budgets: labeled tiles of the label split per budget (ints, or 'all': every tile).
    seeds: one run per seed and (condition, budget); the seed draws the budget's tiles and
        initializes the segmenter. >= 3 for an interval worth reading.
    label_tile: label tile side in real px (None: crop_size); label_split: where tiles come from.
    synthetic_fraction: share of synthetic samples in a mixed training set: R real crops get
        round(R * f / (1 - f)) synthetic pairs (capped by what the set has).
    max_synthetic: synthetic pairs used by synthetic-only runs (None: all of the set).
    steps: optimizer steps per training run. Every run's training set is brought to the size
        of the largest one by repeating its samples (seeded order), so all runs share steps
        per epoch, epochs = ceil(steps / steps per epoch) and the number of selection
        checkpoints.
    crop_size, resolution: real crops/tiles of crop_size px downsampled to resolution px;
        None: the synthetic data's scale (from its manifest), else its image size.
    """

    model_config = ConfigDict(extra="forbid")

    budgets: list[int | Literal["all"]] = [8, 32, "all"]
    seeds: list[int] = [0, 1, 2, 3, 4]
    conditions: list[str] = list(CONDITIONS)
    synthetic_fraction: float = 0.5
    max_synthetic: int | None = None
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    arch: str = "unet"
    encoder: str = "resnet18"
    crop_size: int | None = None
    resolution: int | None = None
    label_tile: int | None = None
    label_split: str = "train"
    test_split: str = "test"
    device: str = "cpu"

    @model_validator(mode="after")
    def _check(self) -> DownstreamConfig:
        """PairforgeError (not a pydantic error) naming the CLI flag of a bad value."""
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise PairforgeError(
                f"--conditions {','.join(self.conditions)}: use some of {', '.join(CONDITIONS)}"
            )
        numbers = [b for b in self.budgets if b != "all"]
        if not self.budgets or any(b < 1 for b in numbers):
            raise PairforgeError(
                f"--budgets {self.budgets}: give positive tile counts or 'all', e.g. 8,32,all"
            )
        if len(set(map(str, self.budgets))) != len(self.budgets):
            raise PairforgeError(f"--budgets {self.budgets}: name each budget once")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise PairforgeError(
                f"--seeds {self.seeds}: give distinct seeds (>= 3 for a meaningful interval)"
            )
        if not 0.0 < self.synthetic_fraction < 1.0:
            raise PairforgeError(
                f"--synthetic-fraction {self.synthetic_fraction}: must be in (0, 1), e.g. 0.5"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise PairforgeError(f"--steps {self.steps}, --batch-size {self.batch_size}: >= 1")
        if self.label_tile is not None and self.label_tile < 1:
            raise PairforgeError(f"--label-tile {self.label_tile}: give a tile side >= 1 px")
        return self

    def validate(self) -> None:  # type: ignore[override]
        """Check again after fields were changed in place (construction checks already)."""
        self._check()


def run_downstream(
    real_dir: str | Path,
    synthetic_dirs: list[str | Path] | str | Path | None,
    config: DownstreamConfig,
    *,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the experiment; returns the JSON-ready result (see `write_downstream`).

    Args:
        real_dir: real dataset with a labeled label split (train) and test split.
        synthetic_dirs: generated sets (same channels and classes), zero or more; each must
            have been generated from exactly one of the evaluated budgets' labels, and each
            (budget, seed) of a synthetic / mixed condition needs one.
        log: called with one line per finished training run (None: silent).

    Returns:
        {"metric": "downstream", "format": 2, "settings", "data" (incl. "budgets": every
        (budget, seed)'s LabelBudget dict), "runs": [{"condition", "budget", "seed", "labels",
        "synthetic_set", "n_real", "n_synthetic", "epochs", "best_epoch", "best_select_miou",
        "selection", "select_miou_per_epoch", "test_miou", "test_per_class_iou", "seconds"}],
        "summary": [per (condition, budget)], "comparisons": [per budget and condition vs
        real: paired difference], "notes": [...]}.
    """
    config.validate()  # fields may have been set after construction
    start = time.perf_counter()
    if synthetic_dirs is None:
        synthetic_dirs = []
    elif isinstance(synthetic_dirs, (str, Path)):
        synthetic_dirs = [synthetic_dirs]
    data = _load_data(real_dir, list(synthetic_dirs), config)
    plan, notes = plan_runs(config, data)
    # Every run trains on the same number of samples per epoch (smaller sets are repeated in
    # seeded random order), so all runs get the same steps per epoch, the same epochs and the
    # same number of selection checkpoints.
    epoch_samples = max(run.n_real + run.n_synthetic for run in plan)
    epochs = epochs_for(config.steps, epoch_samples, config.batch_size)
    runs = []
    for run in plan:
        record = train_planned_run(run, data, config, epoch_samples, epochs)
        runs.append(record)
        if log is not None and progress:
            select = record["best_select_miou"]
            log(
                f"downstream {len(runs)}/{len(plan)}: {run.condition:9s} budget={run.budget} "
                f"seed={run.seed} select mIoU "
                f"{'-' if select is None else f'{select:.3f}'} (epoch {record['best_epoch']}/"
                f"{epochs}) test mIoU {record['test_miou']:.3f} [{record['seconds']:.0f} s]"
            )
    return {
        "metric": "downstream",
        "format": 2,
        "settings": {
            **config.model_dump(),
            "crop_size": data.crop_size,
            "resolution": data.resolution,
            "label_tile": next(iter(data.budgets.values())).tile_size,
            "steps_per_run": epochs * math.ceil(epoch_samples / config.batch_size),
        },
        "data": _data_record(real_dir, data, config),
        "runs": runs,
        "summary": summarize_runs(runs),
        "comparisons": compare_conditions(runs),
        "notes": notes + _protocol_notes(data, config),
        "seconds": time.perf_counter() - start,
    }


def _load_data(real_dir, synthetic_dirs: list, config: DownstreamConfig) -> DownstreamData:
    """Check the inputs, resolve the scale, draw the budgets, read the test tiles, check every
    synthetic set against the budgets and read the sets that are used."""
    from pairforge.data.dataset import load_dataset
    from pairforge.eval.downstream_sets import assign_sets, load_pairs, read_sets
    from pairforge.eval.sets import fill_scale_from

    real = load_dataset(real_dir)
    if real.num_classes < 2:
        raise PairforgeError(
            f"{real_dir}: dataset.yaml declares {real.num_classes} classes; need >= 2"
        )
    needs_synthetic = any(c in ("synthetic", "mixed") for c in config.conditions)
    if needs_synthetic and not synthetic_dirs:
        raise PairforgeError(
            "the synthetic and mixed conditions need SYNTHETIC_DIR (one set per budget and "
            "seed); give them, or run with --conditions real"
        )
    sets = read_sets(synthetic_dirs)  # refuses sets whose labels cannot be checked, early
    crop_size, resolution = config.crop_size, config.resolution
    if synthetic_dirs:
        scales = {fill_scale_from(d, crop_size, resolution) for d in synthetic_dirs}
        if len(scales) > 1:
            raise PairforgeError(
                f"the synthetic sets show different scales (crop px, resolution px): "
                f"{sorted(scales)}; give --crop-size and --resolution, or sets of one scale"
            )
        crop_size, resolution = scales.pop()
    if crop_size is None or resolution is None:
        raise PairforgeError(
            "give --crop-size and --resolution (no synthetic data to take them from)"
        )
    data = load_real_data(real, real_dir, config, crop_size, resolution)
    data.sets = assign_sets(sets, data.budgets, needs_synthetic)
    for synthetic in {id(s): s for s in data.sets.values() if s is not None}.values():
        load_pairs(synthetic, real, data.normalizer, resolution)
    return data


def _data_record(real_dir, data: DownstreamData, config) -> dict:
    """The result's "data" entry: sources, budgets (every tile), test tiles, model selection."""
    return {
        "real": str(real_dir),
        "synthetic": sorted({str(s.path) for s in data.sets.values() if s is not None}),
        "sets": {
            f"{label} seed {seed}": None if s is None else str(s.path)
            for (label, seed), s in data.sets.items()
        },
        "label_split": config.label_split,
        "budgets": [
            {"label": label, **budget.to_dict()} for (label, _), budget in data.budgets.items()
        ],
        "test_measurements": data.test["ids"],
        "n_test_tiles": int(data.test["image"].shape[0]),
        "classes": [c.name for c in data.real.spec.classes],
        "model_selection": "best mIoU on the budget's select tiles (every 4th drawn tile); "
        "budgets without select tiles: fixed schedule, last epoch; never test",
    }


def _protocol_notes(data: DownstreamData, config) -> list[str]:
    """What varies between seeds and what does not (the table's and the plot's footnote)."""
    paths: dict[str, set] = {}
    for (label, _), synthetic in data.sets.items():
        paths.setdefault(label, set()).add(None if synthetic is None else synthetic.path)
    sets_vary = any(len(found) > 1 for found in paths.values())
    return [
        "mIoU in %, on tiles of the held-out test split "
        f"{config.test_split!r} ({int(data.test['image'].shape[0])} tiles); labels touched = "
        "the budget's tiles / pixels (fit + select), the same for every condition at a budget "
        "(the synthetic sets were generated from exactly those labels).",
        "Between seeds vary: the budget's tiles, its selection tiles, the segmenter's "
        "initialization and sample order"
        + (", and the generator (each seed's budget has its own synthetic set)" if sets_vary
           else "") + "; the same for all seeds: the test tiles and the optimizer steps.",
        "vs real: paired difference (same budget, same seed) with a 95 % Student-t interval; "
        "an interval holding 0 reads 'no significant difference'.",
    ]  # fmt: skip
