"""Labeled tiles for the seg commands: the same images, scale and normalizer for head and baseline.

Measurements are cut into non-overlapping `crop_size` tiles and area-downsampled to
`resolution` (the scale the diffusion model was trained at; `pairforge.data.views.load_tiles`),
so the feature head and the supervised baseline see identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pairforge.errors import PairforgeError


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
    max_images: int | None = None,
    data_seed: int = 0,
) -> LabeledTiles:
    """Tiles of the labeled samples of `split` (None = all); `max_images` picks that many tiles
    at random (seeded by `data_seed`), keeping the tile order stable."""
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
    images, masks, source = tiles["image"], tiles["mask"], tiles["source"]
    if max_images is not None and max_images < images.shape[0]:
        chosen = np.sort(
            np.random.default_rng(data_seed).choice(images.shape[0], max_images, replace=False)
        )
        index = torch.from_numpy(chosen)
        images, masks = images[index], masks[index]
        source = [source[i] for i in chosen]
    return LabeledTiles(images, masks, source)


def class_names(data: str | Path) -> list[str]:
    from pairforge.data.dataset import load_dataset

    return [c.name for c in load_dataset(data).spec.classes]
