"""The downstream experiment's data: the label budgets (one per budget size and seed) with their
fit / select tiles at model scale, the test tiles (each pixel counted once), and the seeded
repeat order of a training set."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pairforge.core.seeds import downstream_order_seed
from pairforge.data.budget import LabelBudget, make_budget
from pairforge.data.budget_view import BudgetedDataset, budget_tiles
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError

BudgetKey = tuple[str, int]  # (budget label '8' | 'all', seed)


@dataclass
class DownstreamData:
    """What every training run of one experiment shares.

    real: the real `Dataset`; normalizer: its normalizer (synthetic pairs use it too);
    test: `labeled_tiles` dict {"image", "mask", "ids"} of the test split; budgets: the
    `LabelBudget` of each (budget label, seed), drawn from the label split; sets: the
    `SyntheticSet` each (budget label, seed) trains on (None: no synthetic data).
    """

    real: object
    normalizer: object
    crop_size: int
    resolution: int
    test: dict
    budgets: dict[BudgetKey, LabelBudget]
    sets: dict = field(default_factory=dict)
    _parts: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    def part(self, key: BudgetKey, name: str) -> dict:
        """The fit or select tiles of budget `key` at model scale ({"image" (N, C, res, res),
        "mask" (N, res, res), "source"}); read once, through the budgeted view only."""
        if (key, name) not in self._parts:
            view = BudgetedDataset(self.real, self.budgets[key])
            self._parts[(key, name)] = budget_tiles(
                view, name, self.crop_size, self.resolution, self.normalizer
            )
        return self._parts[(key, name)]

    def crops_per_tile(self) -> int:
        """Model crops cut from one label tile ((tile / crop)^2)."""
        tile = next(iter(self.budgets.values())).tile_size
        return (tile // self.crop_size) ** 2


def check_disjoint_splits(roles: dict[tuple[str, str], list[str]], real_dir) -> None:
    """PairforgeError when two roles (label split, test split) share a sample.

    Args:
        roles: {(role, split name): sample ids}, role e.g. label, test.
    A sample in test and another role makes the test score optimistic. dataset.yaml splits are
    disjoint, so overlaps come from flags naming one split twice (e.g. --test-split train).
    """
    items = list(roles.items())
    for first in range(len(items)):
        for second in range(first + 1, len(items)):
            (role_a, split_a), ids_a = items[first]
            (role_b, split_b), ids_b = items[second]
            shared = sorted(set(ids_a) & set(ids_b))
            if shared:
                shown = ", ".join(shared[:8]) + (
                    f" (+{len(shared) - 8} more)" if len(shared) > 8 else ""
                )
                raise PairforgeError(
                    f"{real_dir}: samples {shown} are in both the {role_a} split {split_a!r} and "
                    f"the {role_b} split {split_b!r}; pass disjoint splits (--label-split and "
                    "--test-split name different splits of dataset.yaml)"
                )


def labeled_tiles(ds, split: str, crop_size: int, resolution: int, normalizer) -> dict:
    """Tiles of a split's labeled measurements, with pixels covered twice set to ignore.

    The last tile row/column is flush with the border and overlaps its neighbor; those pixels
    are counted once (in the first tile that covers them) so every pixel weighs the same.
    """
    import torch

    from pairforge.data.views import load_tiles

    ids = ds.ids(split)
    labeled = [i for i in ids if ds.has_mask(i)]
    if not labeled:
        raise PairforgeError(
            f"{ds.root}: split {split!r} has no labeled samples ({len(ids)} unlabeled); the "
            "downstream experiment needs labeled test measurements"
        )
    tiles = load_tiles(ds, labeled, crop_size, resolution, normalizer=normalizer)
    masks = tiles["mask"].clone()
    factor = crop_size / resolution
    covered: dict[str, np.ndarray] = {}
    for index, (sample_id, y, x) in enumerate(tiles["source"]):
        if sample_id not in covered:
            height, width = tiles["sizes"][sample_id]
            covered[sample_id] = np.zeros(
                (math.ceil(height / factor) + resolution, math.ceil(width / factor) + resolution),
                dtype=bool,
            )
        top, left = round(y / factor), round(x / factor)
        region = covered[sample_id][top : top + resolution, left : left + resolution]
        masks[index][torch.from_numpy(region.copy())] = IGNORE_INDEX
        region[...] = True
    return {"image": tiles["image"], "mask": masks, "ids": labeled}


def repeat_order(num_samples: int, length: int, seed: int):
    """Indices of `length` draws covering 0..num_samples-1 evenly (concatenated seeded permutations)."""
    import torch

    generator = torch.Generator().manual_seed(downstream_order_seed(seed))
    repeats = math.ceil(length / num_samples)
    order = torch.cat([torch.randperm(num_samples, generator=generator) for _ in range(repeats)])
    return order[:length]


def draw_budgets(real, config, tile_size: int) -> dict[BudgetKey, LabelBudget]:
    """The budget of every (size, seed) of `config`, drawn from its label split with tiles of
    `tile_size` px. Reads no mask values (unless the dataset declares an ignore id)."""
    budgets = {}
    for seed in config.seeds:
        for size in config.budgets:
            budget = make_budget(
                real,
                None if size == "all" else int(size),
                seed,
                tile_size,
                config.label_split,
            )
            budgets[(budget.label, seed)] = budget
    return budgets


def load_real_data(real, real_dir, config, crop_size: int, resolution: int) -> DownstreamData:
    """The budgets and the test tiles of the real dataset, after checking that the label and
    test splits share no sample (before any tile is read)."""
    label_ids = [i for i in real.ids(config.label_split) if real.has_mask(i)]
    if not label_ids:
        raise PairforgeError(
            f"{real_dir}: split {config.label_split!r} has no labeled samples; label some or "
            "choose another --label-split"
        )
    # Before any tile is read: a shared sample makes the test scores meaningless.
    check_disjoint_splits(
        {
            ("label", config.label_split): label_ids,
            ("test", config.test_split): real.ids(config.test_split),
        },
        real_dir,
    )
    return DownstreamData(
        real=real,
        normalizer=real.normalizer,
        crop_size=crop_size,
        resolution=resolution,
        test=labeled_tiles(real, config.test_split, crop_size, resolution, real.normalizer),
        budgets=draw_budgets(real, config, config.label_tile or crop_size),
    )
