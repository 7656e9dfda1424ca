"""The downstream experiment's synthetic sets: read them, and pick for each label budget the one
set whose mask-reading makers read exactly that budget's labels (checked from manifest.json)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pairforge.core.budgets import LabelSource, manifest_label_sources, matches_budget
from pairforge.data.budget import LabelBudget
from pairforge.errors import PairforgeError
from pairforge.eval.downstream_data import BudgetKey


@dataclass
class SyntheticSet:
    """One generated set: its folder, its mask-reading makers, and its labeled pairs at model
    resolution (images float32 (N, C, res, res) in the real normalizer's range, masks int64
    (N, res, res)); images / masks are None until `load_pairs`."""

    path: Path
    sources: list[LabelSource]
    images: object | None = None
    masks: object | None = None

    @property
    def available(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])

    def budgets_read(self) -> str:
        return "; ".join(s.describe() for s in self.sources)


def read_sets(dirs: list[str | Path]) -> list[SyntheticSet]:
    """The sets' label sources (PairforgeError for a set that cannot be checked); no pixels."""
    paths = [Path(d) for d in dirs]
    for index, path in enumerate(paths):
        if path.resolve() in (p.resolve() for p in paths[:index]):
            raise PairforgeError(f"SYNTHETIC_DIR {path} is given twice; give each set once")
    return [SyntheticSet(path, manifest_label_sources(path)) for path in paths]


def assign_sets(
    sets: list[SyntheticSet],
    budgets: dict[BudgetKey, LabelBudget],
    needs_synthetic: bool,
) -> dict[BudgetKey, SyntheticSet | None]:
    """The set each (budget, seed) trains its mixed / synthetic-only runs on.

    PairforgeError naming the set and the budgets when a set matches no evaluated budget or two
    sets match one; when `needs_synthetic`, also when a budget has no matching set (with the
    fix: train the generators on that budget and generate a set).
    """
    evaluated = "; ".join(f"[{key[0]}, seed {key[1]}] {b.describe()}" for key, b in budgets.items())
    chosen: dict[BudgetKey, SyntheticSet | None] = {key: None for key in budgets}
    for synthetic in sets:
        keys = [key for key, budget in budgets.items() if matches_budget(synthetic.sources, budget)]
        if not keys:
            raise PairforgeError(
                f"synthetic set {synthetic.path}: {synthetic.budgets_read()}, which is none of "
                f"the budgets evaluated: {evaluated}; generate it from generators trained on one "
                "of them (same --labels, --label-seed and --label-tile), or leave it out"
            )
        for key in keys:
            other = chosen[key]
            if other is not None:
                raise PairforgeError(
                    f"synthetic sets {other.path} and {synthetic.path} both match budget "
                    f"{key[0]} of seed {key[1]}; give one set per budget and seed"
                )
            chosen[key] = synthetic
    missing = [key for key, found in chosen.items() if found is None]
    if needs_synthetic and missing:
        key = missing[0]
        size = key[0]
        have = "; ".join(f"{s.path}: {s.budgets_read()}" for s in sets) or "no set given"
        raise PairforgeError(
            f"budget {size} of seed {key[1]} ({budgets[key].describe()}) needs a synthetic set "
            f"made from exactly its labels, and none matches ({have}); train the generators "
            f"with --set data.labels={size} --set data.label_seed={key[1]} (and "
            f"data.label_tile={budgets[key].tile_size}) and generate a set, or run with "
            "--conditions real"
            + (f" (also missing: {', '.join(f'{b} seed {s}' for b, s in missing[1:])})"
               if len(missing) > 1 else "")
        )  # fmt: skip
    return chosen


def load_pairs(synthetic: SyntheticSet, real, normalizer, resolution: int) -> None:
    """Read the set's labeled pairs (real normalizer, model resolution) into `synthetic`;
    PairforgeError when it has no masks or other classes or channels than the real data."""
    import torch

    from pairforge.eval.sets import load_eval_set

    path = synthetic.path
    loaded = load_eval_set(path, normalizer=normalizer, resolution=resolution)
    if loaded.masks is None:
        raise PairforgeError(f"{path}: synthetic dataset has no masks")
    if loaded.class_names != [c.name for c in real.spec.classes]:
        raise PairforgeError(
            f"{path}: classes differ: real {[c.name for c in real.spec.classes]} vs synthetic "
            f"{loaded.class_names}"
        )
    if loaded.channel_names != real.spec.channel_names:
        raise PairforgeError(
            f"{path}: channels differ: real {real.spec.channel_names} vs synthetic "
            f"{loaded.channel_names}"
        )
    synthetic.images = torch.from_numpy(loaded.images[loaded.labeled])
    synthetic.masks = torch.from_numpy(loaded.masks)
