"""The budgeted view of a dataset: only a label budget's tiles carry masks (see
`pairforge.data.budget` for how a budget is drawn), and the budget's tiles at a model's scale."""

from __future__ import annotations

import numpy as np

from pairforge.data.budget import LabelBudget
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError


class BudgetedDataset:
    """A dataset in which only the budget's tiles carry masks.

    Everything but masks is the underlying dataset's (attributes are forwarded). `read_mask`
    returns IGNORE_INDEX outside the budget's tiles, and None for samples without a budget
    tile; `has_mask` is True only for samples with one.
    """

    def __init__(self, dataset, budget: LabelBudget):
        if budget.dataset != dataset.spec.name:
            raise PairforgeError(
                f"{dataset.root}: label budget of dataset {budget.dataset!r} does not belong to "
                f"dataset {dataset.spec.name!r}"
            )
        self.base = dataset
        self.budget = budget
        self._windows: dict[str, list[tuple[int, int]]] = {}
        for sample_id, y, x in budget.tiles:
            self._windows.setdefault(sample_id, []).append((y, x))

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def has_mask(self, sample_id: str) -> bool:
        return sample_id in self._windows

    def read_mask(self, sample_id: str, expected_shape: tuple[int, int] | None = None):
        if sample_id not in self._windows:
            return None
        full = self.base.read_mask(sample_id, expected_shape)
        out = np.full_like(full, IGNORE_INDEX)
        t = self.budget.tile_size
        for y, x in self._windows[sample_id]:
            out[y : y + t, x : x + t] = full[y : y + t, x : x + t]
        return out

    def read_pair(self, sample_id: str):
        image = self.base.read_image(sample_id)
        return image, self.read_mask(sample_id, expected_shape=image.shape[1:])

    def tile_grid(self, sample_id: str) -> set[tuple[int, int]]:
        """(row, column) grid cells of the sample's budget tiles."""
        t = self.budget.tile_size
        return {(y // t, x // t) for y, x in self._windows.get(sample_id, [])}


def budget_tiles(
    view: BudgetedDataset,
    part: str,
    crop_size: int,
    resolution: int,
    normalizer=None,
) -> dict:
    """The tiles of one part of the view's budget, at a model's scale.

    Each budget tile is cut into (tile_size / crop_size)^2 `crop_size` tiles, area-downsampled
    to `resolution` (masks by majority). Returns {"image": float32 (N, C, res, res) normalized,
    "mask": int64 (N, res, res), "source": [(id, y, x)] full-res px}; N may be 0.
    """
    import torch

    from pairforge.data.views import downsample_image, downsample_mask

    budget = view.budget
    if budget.tile_size % crop_size:
        raise PairforgeError(
            f"label tiles of {budget.tile_size} px cannot be cut into the model's {crop_size} px "
            f"crops; draw the budget with a tile size that is a multiple of {crop_size} "
            "(--label-tile / data.label_tile)"
        )
    normalizer = normalizer or view.normalizer
    factor = crop_size / resolution
    tiles = budget.part(part)
    by_id: dict[str, list[int]] = {}
    for position, (sample_id, _, _) in enumerate(tiles):
        by_id.setdefault(sample_id, []).append(position)
    cut: list[list] = [[] for _ in tiles]  # per budget tile: its (image, mask, source) crops
    for sample_id, positions in by_id.items():  # one sample in memory at a time
        image, mask = view.read_pair(sample_id)
        for position in positions:
            _, y, x = tiles[position]
            for dy in range(0, budget.tile_size, crop_size):
                for dx in range(0, budget.tile_size, crop_size):
                    top, left = y + dy, x + dx
                    crop = image[:, top : top + crop_size, left : left + crop_size]
                    mcrop = mask[top : top + crop_size, left : left + crop_size]
                    cut[position].append(
                        (
                            downsample_image(torch.from_numpy(normalizer.encode(crop)), factor),
                            downsample_mask(torch.from_numpy(mcrop), factor, view.num_classes),
                            (sample_id, top, left),
                        )
                    )
    flat = [item for crops in cut for item in crops]  # draw order
    images = [item[0] for item in flat]
    masks = [item[1] for item in flat]
    source = [item[2] for item in flat]
    channels = view.num_channels
    return {
        "image": torch.stack(images).float()
        if images
        else torch.zeros(0, channels, resolution, resolution),
        "mask": torch.stack(masks).long()
        if masks
        else torch.zeros(0, resolution, resolution, dtype=torch.long),
        "source": source,
    }
