"""Labeled tiles and measurements for the seg commands: the same images, scale and normalizer for
head and baseline.

Measurements are cut into non-overlapping `crop_size` tiles and area-downsampled to
`resolution` (the scale the diffusion model was trained at; `pairforge.data.views.load_tiles`),
so the feature head and the supervised baseline see identical pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pairforge.errors import PairforgeError


@dataclass(frozen=True)
class TileChoice:
    """Which labeled tiles `seg fit` and `seg baseline` train on (the same for both).

    split: labeled split to train on; val_split: split for early stopping / model selection
    (None or "": none); max_images: that many randomly chosen training tiles (None: all), chosen
    with `data_seed`; crop_size / resolution: source tile side and model side in px (None: the
    run's, see `pairforge.seg.source.tile_scale`).
    """

    split: str | None = "train"
    val_split: str | None = "val"
    max_images: int | None = None
    data_seed: int = 0
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


def training_tiles(
    data: str | Path, choice: TileChoice, crop_size: int, resolution: int, normalizer=None
) -> tuple[LabeledTiles, LabeledTiles | None]:
    """(train, val) tiles of `choice` at one scale; val None without a val split. All val
    tiles are kept (max_images picks training tiles only)."""
    train = labeled_tiles(
        data,
        choice.split,
        crop_size,
        resolution,
        normalizer,
        max_images=choice.max_images,
        data_seed=choice.data_seed,
    )
    val = None
    if choice.val_split:
        val = labeled_tiles(data, choice.val_split, crop_size, resolution, normalizer)
    return train, val


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
