"""Downstream experiment: does a segmenter get better when synthetic pairs join its training data?

Protocol (DESIGN.md): one segmenter recipe (`pairforge.core.supervised`) is trained on
real-only, synthetic-only and real + synthetic data, at several label budgets (numbers of
labeled real training crops) and several seeds. Each training run selects its epoch by mIoU on
tiles of the validation split, never the test split; the selected model is scored once on tiles
of the held-out test measurements. Reported: mean +- std over seeds.

Real training crops are random `crop_size` crops of the labeled train-split measurements,
downsampled to `resolution` (the training view); synthetic pairs are read as they are (already
at model resolution) and normalized with the real dataset's normalizer so that both share one
value range. Every run trains for the same number of optimizer steps with the same number of
validation checkpoints, so a bigger (mixed) training set is not also a longer training, nor one
with more chances to be selected.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from pairforge.errors import PairforgeError
from pairforge.eval.downstream_data import DownstreamData, load_real_data, load_synthetic_pairs
from pairforge.eval.downstream_plan import CONDITIONS, epochs_for, plan_runs
from pairforge.eval.downstream_summary import summarize_runs, write_downstream
from pairforge.eval.downstream_train import train_planned_run

# The experiment's entry points (its parts live in downstream_plan, _data, _train, _summary).
__all__ = ["DownstreamConfig", "run_downstream", "summarize_runs", "write_downstream"]


class DownstreamConfig(BaseModel):
    """Settings of one downstream experiment (all recorded in downstream.json).

    budgets: numbers of labeled real training crops; synthetic-only runs ignore them.
    seeds: one training run per seed and (condition, budget); >= 3 for a std worth reading.
    synthetic_fraction: share of synthetic samples in a mixed training set: a budget of B real
        crops gets round(B * f / (1 - f)) synthetic pairs (capped by what exists).
    max_synthetic: synthetic pairs used by synthetic-only runs (None: all).
    steps: optimizer steps per training run. Every run's training set is brought to the size
        of the largest one by repeating its samples (seeded order), so all runs share steps
        per epoch, epochs = ceil(steps / steps per epoch) and the number of validation
        checkpoints.
    crop_size, resolution: real crops/tiles of crop_size px downsampled to resolution px;
        None: the synthetic data's scale (from its manifest), else its image size.
    """

    model_config = ConfigDict(extra="forbid")

    budgets: list[int] = [8, 32]
    seeds: list[int] = [0, 1, 2]
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
    train_split: str = "train"
    val_split: str = "val"
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
        if any(b < 1 for b in self.budgets) or not self.budgets:
            raise PairforgeError(f"--budgets {self.budgets}: give positive crop counts, e.g. 8,32")
        if not self.seeds:
            raise PairforgeError("--seeds: give at least one seed (>= 3 for a meaningful std)")
        if not 0.0 < self.synthetic_fraction < 1.0:
            raise PairforgeError(
                f"--synthetic-fraction {self.synthetic_fraction}: must be in (0, 1), e.g. 0.5"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise PairforgeError(f"--steps {self.steps}, --batch-size {self.batch_size}: >= 1")
        return self

    def validate(self) -> None:  # type: ignore[override]
        """Check again after fields were changed in place (construction checks already)."""
        self._check()


def run_downstream(
    real_dir: str | Path,
    synthetic_dir: str | Path | None,
    config: DownstreamConfig,
    *,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the experiment; returns the JSON-ready result (see `write_downstream`).

    Args:
        real_dir: real dataset with labeled train, val and test splits.
        synthetic_dir: generated dataset (same channels and classes); may be None only when
            config.conditions == ["real"].
        log: called with one line per finished training run (None: silent).

    Returns:
        {"metric": "downstream", "settings": {...}, "data": {...}, "runs": [{"condition",
        "budget" (None for synthetic-only), "seed", "n_real", "n_synthetic", "epochs",
        "best_epoch", "best_val_miou", "selection", "val_miou_per_epoch", "test_miou",
        "test_per_class_iou", "seconds"}],
        "summary": [{"condition", "budget", "n_seeds", "test_miou_mean", "test_miou_std",
        "val_miou_mean"}], "notes": [...]}.
    """
    config.validate()  # fields may have been set after construction
    start = time.perf_counter()
    data = _load_data(real_dir, synthetic_dir, config)
    plan, notes = plan_runs(config, data.available)
    # Every run trains on the same number of samples per epoch (smaller sets are repeated in
    # seeded random order), so all runs get the same steps per epoch, the same epochs and the
    # same number of validation checkpoints to select from.
    epoch_samples = max(run.n_real + run.n_synthetic for run in plan)
    epochs = epochs_for(config.steps, epoch_samples, config.batch_size)
    runs = []
    for run in plan:
        record = train_planned_run(run, data, config, epoch_samples, epochs)
        runs.append(record)
        if log is not None and progress:
            log(
                f"downstream {len(runs)}/{len(plan)}: {run.condition:9s} budget={run.budget} "
                f"seed={run.seed} val mIoU {record['best_val_miou']:.3f} (epoch "
                f"{record['best_epoch']}/{epochs}) test mIoU {record['test_miou']:.3f} "
                f"[{record['seconds']:.0f} s]"
            )
    return {
        "metric": "downstream",
        "settings": {
            **config.model_dump(),
            "crop_size": data.crop_size,
            "resolution": data.resolution,
        },
        "data": _data_record(real_dir, synthetic_dir, data, config),
        "runs": runs,
        "summary": summarize_runs(runs),
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def _load_data(real_dir, synthetic_dir, config: DownstreamConfig) -> DownstreamData:
    """Check the inputs, resolve the scale, read the real splits and (when a condition needs
    them) the synthetic pairs."""
    from pairforge.data.dataset import load_dataset
    from pairforge.eval.sets import fill_scale_from

    real = load_dataset(real_dir)
    if real.num_classes < 2:
        raise PairforgeError(
            f"{real_dir}: dataset.yaml declares {real.num_classes} classes; need >= 2"
        )
    needs_synthetic = any(c in ("synthetic", "mixed") for c in config.conditions)
    if needs_synthetic and synthetic_dir is None:
        raise PairforgeError("synthetic and mixed conditions need SYNTHETIC_DIR")
    crop_size, resolution = config.crop_size, config.resolution
    if synthetic_dir is not None:
        crop_size, resolution = fill_scale_from(synthetic_dir, crop_size, resolution)
    if crop_size is None or resolution is None:
        raise PairforgeError(
            "give --crop-size and --resolution (no synthetic data to take them from)"
        )
    data = load_real_data(real, real_dir, config, crop_size, resolution)
    if needs_synthetic:
        load_synthetic_pairs(synthetic_dir, data)
    return data


def _data_record(real_dir, synthetic_dir, data: DownstreamData, config) -> dict:
    """The result's "data" entry: sources, measurements and tile counts, model selection."""
    return {
        "real": str(real_dir),
        "synthetic": None if synthetic_dir is None else str(synthetic_dir),
        "n_synthetic_available": data.available,
        "train_measurements": data.train_ids,
        "val_measurements": data.val["ids"],
        "test_measurements": data.test["ids"],
        "n_val_tiles": int(data.val["image"].shape[0]),
        "n_test_tiles": int(data.test["image"].shape[0]),
        "classes": [c.name for c in data.real.spec.classes],
        "model_selection": f"best val mIoU on split {config.val_split!r} (never test)",
    }
