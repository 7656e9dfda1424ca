"""Labeled tiles and measurements for the seg commands: the same images, scale and normalizer for
head and baseline.

Measurements are cut into non-overlapping `crop_size` tiles and area-downsampled to
`resolution` (the scale the diffusion model was trained at; `pairforge.data.views.load_tiles`),
so the feature head and the supervised baseline see identical pixels. Training tiles are a label
budget's (`pairforge.data.budget`: masks read only inside the budget's tiles); every tile of a
split is read only to evaluate (`labeled_tiles`, e.g. on test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pairforge.data.budget import LabelBudget
from pairforge.errors import PairforgeError


@dataclass(frozen=True)
class TileChoice:
    """Which labeled tiles `seg fit` and `seg baseline` train on (the same for both): a label
    budget (`pairforge.data.budget`).

    labels: budget size in tiles (None: every tile of the label split), or the Path of a
    budget file (`pairforge.data.budget.load_budget_file`: its tiles, seed and tile size, e.g.
    the budget.json of `seg import-labels`); label_seed: the
    budget's seed; label_tile: budget tile side in source px (None: the model's crop_size);
    label_split: the split the tiles come from; crop_size / resolution: source tile side and
    model side in px (None: the run's, see `pairforge.seg.source.tile_scale`).
    """

    labels: int | Path | None = None
    label_seed: int = 0
    label_tile: int | None = None
    label_split: str = "train"
    crop_size: int | None = None
    resolution: int | None = None


@dataclass
class LabeledTiles:
    """images float32 (N, C, res, res) normalized; masks int64 (N, res, res) 255 = ignore;
    source: (sample id, y, x) of each tile in full-resolution px."""

    images: torch.Tensor
    masks: torch.Tensor
    source: list[tuple[str, int, int]]


def labeled_tiles(
    data: str | Path,
    split: str | None,
    crop_size: int,
    resolution: int,
    normalizer=None,
) -> LabeledTiles:
    """Every tile of the labeled samples of `split` (None = all), for EVALUATION (e.g. a test
    split). Training tiles come from a label budget (`training_tiles`), never from here."""
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import load_tiles

    dataset = load_dataset(data)
    ids = [i for i in dataset.ids(split) if dataset.has_mask(i)]
    if not ids:
        available = ", ".join(sorted(dataset.spec.splits)) or "none"
        raise PairforgeError(
            f"{data}: split {split!r} has no labeled samples (splits: {available}); pass "
            "--split with a labeled split"
        )
    tiles = load_tiles(
        dataset, ids, crop_size, resolution, normalizer=normalizer or dataset.normalizer
    )
    return LabeledTiles(tiles["image"], tiles["mask"], tiles["source"])


def class_names(data: str | Path) -> list[str]:
    from pairforge.data.dataset import load_dataset

    return [c.name for c in load_dataset(data).spec.classes]


@dataclass
class BudgetTiles:
    """The tiles of a label budget at a model's scale: fit (training) and select (early
    stopping / best epoch; None when the budget has no selection tile: fixed schedule)."""

    budget: LabelBudget
    fit: LabeledTiles
    select: LabeledTiles | None


def draw_budget(data: str | Path, choice: TileChoice, crop_size: int):
    """(dataset, LabelBudget of `choice`): tile side `choice.label_tile`, else `crop_size`."""
    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset

    dataset = load_dataset(data)
    if isinstance(choice.labels, Path):  # a budget file: its own tiles, tile size and split
        from pairforge.data.budget import load_budget_file

        return dataset, load_budget_file(choice.labels, dataset, choice.label_split,
                                         choice.label_tile)  # fmt: skip
    tile = choice.label_tile or crop_size
    return dataset, make_budget(dataset, choice.labels, choice.label_seed, tile, choice.label_split)


def training_tiles(
    data: str | Path, choice: TileChoice, crop_size: int, resolution: int, normalizer=None
) -> BudgetTiles:
    """The budget of `choice` and its fit / select tiles at one scale. Masks are read only
    through a `BudgetedDataset`, so no label outside the budget is touched."""
    dataset, budget = draw_budget(data, choice, crop_size)
    return budget_tile_sets(dataset, budget, crop_size, resolution, normalizer)


def budget_tile_sets(
    dataset, budget: LabelBudget, crop_size: int, resolution: int, normalizer=None
) -> BudgetTiles:
    """Fit / select tiles of `budget` on `dataset` (a loaded Dataset) at one scale."""
    from pairforge.data.budget_view import BudgetedDataset, budget_tiles

    view = BudgetedDataset(dataset, budget)
    normalizer = normalizer or dataset.normalizer

    def part(name: str) -> LabeledTiles:
        tiles = budget_tiles(view, name, crop_size, resolution, normalizer)
        return LabeledTiles(tiles["image"], tiles["mask"], tiles["source"])

    select = part("select") if budget.select_tiles else None
    return BudgetTiles(budget, part("fit"), select)


def dataset_normalizer(data: str | Path):
    """The ChannelNormalizer of a dataset folder (dataset.yaml's, else fitted on its train split)."""
    from pairforge.data.dataset import load_dataset

    return load_dataset(data).normalizer


def read_image_file(path: Path) -> np.ndarray:
    """One measurement file (TIFF / NPY) as float32 (C, H, W); a 2-D file is one channel.
    Errors name the --image flag."""
    from pairforge.data.dataset import read_array

    if not path.exists():
        raise PairforgeError(f"--image {path} does not exist")
    array = np.asarray(read_array(path), dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise PairforgeError(f"--image {path}: shape {array.shape}; expected (C, H, W)")
    return array


def measurements(
    data: Path | None, split: str | None, image: Path | None
) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(sample id, reader of its physical image (C, H, W)) for every sample of `split` of the
    dataset `data` (None: all), or for the one file `image` (id = its stem)."""
    if data is not None:
        from pairforge.data.dataset import load_dataset

        dataset = load_dataset(data)
        return [(i, lambda i=i: dataset.read_image(i)) for i in dataset.ids(split)]
    return [(image.stem, lambda: read_image_file(image))]
