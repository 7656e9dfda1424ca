"""Target class fractions for fraction-conditioned mask / joint runs: parsing the generate flags,
per-sample targets, the guided draw and the achieved fractions.

Forms (`pairforge generate --pipeline joint|two-stage`):
- `--fractions grain=0.45,pore=0.10`: one target for every sample. Names are the dataset's
  class names, values in [0, 1] summing to <= 1. Classes left out share the remainder in
  proportion to their mean fraction in the run's training crops (one class left out gets it
  all); naming every class needs a sum of 1 (within 1e-3).
- `--fractions-from train`: sample i's target is a training crop's fractions, drawn by its seed.
- `--oversample pore=3` (implies `--fractions-from train`): that draw with the named classes'
  fractions multiplied by their factors, renormalized to sum 1.
The training crops are those the run trained on: data.path / data.split of its config, through
its label budget when it had one, so no mask outside what the run read is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pairforge.core.run import layout_of
from pairforge.core.task_fractions import is_fraction_model
from pairforge.core.tasks import SamplingCondition, get_task
from pairforge.core.unconditional import DrawnSamples, SamplingSettings, draw_with
from pairforge.errors import PairforgeError

DEFAULT_FRACTION_GUIDANCE = 2.0
TRAIN_POOL_SIZE = 512  # training crops whose fractions targets are drawn from
SUM_TOLERANCE = 1e-3
_TARGET_STREAM = 0x46524143  # seed stream of the per-sample target draws ("FRAC")


def parse_assignments(text: str, names: Sequence[str], flag: str) -> dict[int, float]:
    """'grain=0.45,pore=0.1' -> {class index: value}; PairforgeError naming the flag and part."""
    result: dict[int, float] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, value = part.partition("=")
        if not sep:
            raise PairforgeError(
                f"{flag} {text!r}: {part!r} is not NAME=VALUE, e.g. {flag} pore=0.1."
            )
        if name.strip() not in names:
            raise PairforgeError(
                f"{flag} {text!r}: class {name.strip()!r} is unknown; the run's classes are "
                f"{', '.join(names)}."
            )
        try:
            number = float(value)
        except ValueError:
            raise PairforgeError(f"{flag} {text!r}: {value!r} of {name} is not a number.") from None
        if not np.isfinite(number) or number < 0:
            raise PairforgeError(f"{flag} {text!r}: {name}={value} must be a number >= 0.")
        result[list(names).index(name.strip())] = number
    if not result:
        raise PairforgeError(f"{flag} {text!r}: give at least one NAME=VALUE, e.g. pore=0.1.")
    return result


def resolve_fixed(
    given: dict[int, float], names: Sequence[str], train_mean: np.ndarray | None, text: str
) -> np.ndarray:
    """The (K,) target of `--fractions`: the given values, the remainder split over the classes
    left out in proportion to train_mean (needed only when two or more are left out)."""
    k = len(names)
    total = sum(given.values())
    if any(v > 1 for v in given.values()) or total > 1 + SUM_TOLERANCE:
        raise PairforgeError(
            f"--fractions {text!r}: the fractions sum to {total:.4g} > 1; give values in [0, 1] "
            "summing to at most 1 (classes left out get the remainder)."
        )
    target = np.zeros(k)
    for index, value in given.items():
        target[index] = value
    missing = [i for i in range(k) if i not in given]
    remainder = max(0.0, 1.0 - total)
    if not missing:
        if abs(total - 1) > SUM_TOLERANCE:
            raise PairforgeError(
                f"--fractions {text!r}: every class is named but the fractions sum to {total:.4g}; "
                "make them sum to 1, or leave a class out to receive the remainder."
            )
        return target / target.sum()
    if len(missing) == 1:
        target[missing[0]] = remainder
    else:
        weights = np.ones(len(missing)) if train_mean is None else train_mean[missing]
        weights = weights if weights.sum() > 0 else np.ones(len(missing))
        target[missing] = remainder * weights / weights.sum()
    return target / target.sum() if target.sum() > 0 else target


def training_fractions(run, count: int = TRAIN_POOL_SIZE, seed: int = 0) -> np.ndarray:
    """(count, K) class fractions of random training crops of `run` at its model resolution (the
    crops of its config's data.path / data.split, inside its label budget when it had one)."""
    from pairforge.models.fractions import mask_fractions

    masks, num_classes = training_masks(run, count, seed)
    fractions, labeled = mask_fractions(masks, num_classes)
    return fractions[labeled].double().numpy()


def training_masks(run, count: int = TRAIN_POOL_SIZE, seed: int = 0):
    """((count, res, res) long masks of random training crops of `run` at its model
    resolution, K): the crops `training_fractions` measures."""
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import RandomCropDataset

    config = run.config
    if config is None:
        raise PairforgeError(
            f"{run.path}: has no config.yaml, so its training crops are unknown; give every "
            "class with --fractions (summing to 1) instead of a training distribution."
        )
    ds = load_dataset(config.data.path)
    ids = [i for i in ds.ids(config.data.split) if ds.has_mask(i)]
    budget = run.label_budget
    if budget is not None:
        from pairforge.data.budget_view import BudgetedDataset

        ds, ids = BudgetedDataset(ds, budget), budget.ids
    crops = RandomCropDataset(
        ds, ids, crop_size=config.data.crop_size, resolution=config.data.resolution,
        augment=False, length=count, require_mask=True, seed=seed,
    )  # fmt: skip
    return torch.stack([crops[i]["mask"] for i in range(count)]), ds.num_classes


@dataclass
class FractionTargets:
    """Per-sample targets: mode "fixed" (`fixed` (K,)), "train" or "oversample" (draws from
    `pool` (N, K) training fractions, oversample {class index: factor}); guidance: the CFG
    scale w; names: the class names."""

    mode: str
    names: tuple[str, ...]
    guidance: float = DEFAULT_FRACTION_GUIDANCE
    fixed: np.ndarray | None = None
    pool: np.ndarray | None = None
    oversample: dict[int, float] | None = None

    def for_seeds(self, seeds: Sequence[int]) -> torch.Tensor:
        """(B, K) float32 targets of the samples with these seeds (independent of the batch)."""
        if self.mode == "fixed":
            return torch.as_tensor(np.tile(self.fixed, (len(seeds), 1)), dtype=torch.float32)
        rows = []
        for seed in seeds:
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TARGET_STREAM]))
            row = self.pool[rng.integers(len(self.pool))].copy()
            for index, factor in (self.oversample or {}).items():
                row[index] *= factor
            rows.append(row / row.sum() if row.sum() > 0 else row)
        return torch.as_tensor(np.stack(rows), dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        """The manifest / settings entry (what decides the targets)."""
        entry: dict[str, Any] = {"mode": self.mode, "guidance": self.guidance}
        if self.fixed is not None:
            entry["target"] = dict(zip(self.names, map(float, self.fixed), strict=True))
        if self.pool is not None:
            entry["train_pool"] = {
                "crops": len(self.pool),
                "mean": dict(zip(self.names, map(float, self.pool.mean(0)), strict=True)),
            }
        if self.oversample:
            entry["oversample"] = {self.names[i]: f for i, f in self.oversample.items()}
        return entry


def build_targets(
    run,
    role_flag: str,
    fractions: str | None = None,
    fractions_from: str | None = None,
    oversample: str | None = None,
    guidance: float | None = None,
) -> FractionTargets | None:
    """FractionTargets of the generate flags for `run` (the conditioned mask / joint run named
    by role_flag), or None without any of them."""
    if fractions is None and fractions_from is None and oversample is None:
        return None
    if not is_fraction_model(run.model):
        raise PairforgeError(
            f"--fractions / --fractions-from / --oversample need a fraction-conditioned run, but "
            f"{role_flag} {run.path} is not; train it with --set model.fraction_conditioning=true."
        )
    if fractions is not None and (fractions_from is not None or oversample is not None):
        raise PairforgeError(
            "--fractions gives one fixed target; it does not combine with --fractions-from / "
            "--oversample (a distribution); pass one form."
        )
    if fractions_from not in (None, "train"):
        raise PairforgeError(f"--fractions-from {fractions_from!r} is unknown; use 'train'.")
    names = tuple(c.name for c in run.spec.classes)
    if guidance is None:
        recorded = getattr(run.record, "fraction_conditioning", None) or {}
        guidance = float(recorded.get("guidance", DEFAULT_FRACTION_GUIDANCE))
    if fractions is not None:
        given = parse_assignments(fractions, names, "--fractions")
        needs_mean = len(names) - len(given) >= 2 and sum(given.values()) < 1
        mean = training_fractions(run).mean(0) if needs_mean else None
        return FractionTargets(
            "fixed", names, guidance, fixed=resolve_fixed(given, names, mean, fractions)
        )
    factors = parse_assignments(oversample, names, "--oversample") if oversample else None
    if factors and any(f <= 0 for f in factors.values()):
        raise PairforgeError(f"--oversample {oversample!r}: factors must be > 0, e.g. pore=3.")
    pool = training_fractions(run)
    mode = "oversample" if factors else "train"
    return FractionTargets(mode, names, guidance, pool=pool, oversample=factors)


def draw_with_fractions(
    run, seeds: Sequence[int], targets: torch.Tensor, guidance: float, settings: SamplingSettings
) -> DrawnSamples:
    """Samples of a fraction-conditioned run guided towards targets (B, K): the noise of
    `draw_unconditional` (same seeds, same stage), eps = eps_null + w (eps_cond - eps_null)."""
    task = get_task(run.task)
    layout = layout_of(run)
    condition = SamplingCondition(fractions=targets, seeds=tuple(int(s) for s in seeds))
    denoiser = task.denoiser(layout, run.model, condition, guidance_scale=guidance)
    return draw_with(run, denoiser, seeds, settings)


def achieved_fractions(masks: torch.Tensor, num_classes: int) -> np.ndarray:
    """(B, K) class fractions of generated masks (B, H, W)."""
    from pairforge.models.fractions import mask_fractions

    return mask_fractions(torch.as_tensor(masks).cpu(), num_classes)[0].double().numpy()
