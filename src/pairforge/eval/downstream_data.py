"""The downstream experiment's data: labeled real train ids, val / test tiles (each pixel counted
once), seeded real training crops, the synthetic pairs, and the seeded repeat order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pairforge.core.seeds import downstream_order_seed
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError


@dataclass
class DownstreamData:
    """What every training run of one experiment shares.

    real: the real `Dataset`; normalizer: its normalizer (synthetic pairs use it too);
    train_ids: labeled measurements of the train split; val, test: `labeled_tiles` dicts
    {"image", "mask", "ids"}; synthetic_images (N, C, res, res) / synthetic_masks (N, res, res)
    tensors, or None when no condition needs synthetic data.
    """

    real: object
    normalizer: object
    crop_size: int
    resolution: int
    train_ids: list[str]
    val: dict
    test: dict
    synthetic_images: object | None = None
    synthetic_masks: object | None = None

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    @property
    def available(self) -> int:
        """Synthetic pairs that exist (0 without synthetic data)."""
        return 0 if self.synthetic_images is None else int(self.synthetic_images.shape[0])


def check_disjoint_splits(roles: dict[tuple[str, str], list[str]], real_dir) -> None:
    """PairforgeError when two of train / val / test share a sample.

    Args:
        roles: {(role, split name): sample ids}, role one of train, val, test.
    A training sample in val makes model selection reward memorization; any sample in test and
    another role makes the test score optimistic. dataset.yaml splits are disjoint, so overlaps
    come from flags naming one split twice (e.g. --val-split train).
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
                    f"the {role_b} split {split_b!r}; pass disjoint splits (--train-split, "
                    "--val-split, --test-split name different splits of dataset.yaml)"
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
            "downstream experiment needs labeled val and test measurements"
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


def real_training_crops(ds, ids, count: int, crop_size: int, resolution: int, normalizer, seed):
    """`count` random labeled crops (seeded), (count, C, res, res) and (count, res, res)."""
    import torch

    from pairforge.data.views import RandomCropDataset

    crops = RandomCropDataset(
        ds,
        ids,
        crop_size=crop_size,
        resolution=resolution,
        augment=False,  # the segmenter's training loop augments
        length=count,
        normalizer=normalizer,
        require_mask=True,
        seed=seed,
    )
    items = [crops[i] for i in range(count)]
    return torch.stack([i["image"] for i in items]), torch.stack([i["mask"] for i in items])


def repeat_order(num_samples: int, length: int, seed: int):
    """Indices of `length` draws covering 0..num_samples-1 evenly (concatenated seeded permutations)."""
    import torch

    generator = torch.Generator().manual_seed(downstream_order_seed(seed))
    repeats = math.ceil(length / num_samples)
    order = torch.cat([torch.randperm(num_samples, generator=generator) for _ in range(repeats)])
    return order[:length]


def load_real_data(real, real_dir, config, crop_size: int, resolution: int) -> DownstreamData:
    """Labeled train ids and val / test tiles of the real dataset, after checking that the
    train, val and test splits share no sample (before any tile is read)."""
    normalizer = real.normalizer
    train_ids = [i for i in real.ids(config.train_split) if real.has_mask(i)]
    if not train_ids:
        raise PairforgeError(
            f"{real_dir}: split {config.train_split!r} has no labeled samples; label some or "
            "choose another --train-split"
        )
    # Before any tile is read: a shared sample makes selection or test scores meaningless.
    check_disjoint_splits(
        {
            ("train", config.train_split): train_ids,
            ("val", config.val_split): real.ids(config.val_split),
            ("test", config.test_split): real.ids(config.test_split),
        },
        real_dir,
    )
    return DownstreamData(
        real=real,
        normalizer=normalizer,
        crop_size=crop_size,
        resolution=resolution,
        train_ids=train_ids,
        val=labeled_tiles(real, config.val_split, crop_size, resolution, normalizer),
        test=labeled_tiles(real, config.test_split, crop_size, resolution, normalizer),
    )


def load_synthetic_pairs(synthetic_dir: str | Path, data: DownstreamData) -> None:
    """Read the labeled synthetic pairs into `data` (real normalizer, model resolution);
    PairforgeError when they have no masks or other classes or channels than the real data."""
    import torch

    from pairforge.eval.sets import load_eval_set

    real = data.real
    synthetic = load_eval_set(synthetic_dir, normalizer=data.normalizer, resolution=data.resolution)
    if synthetic.masks is None:
        raise PairforgeError(f"{synthetic_dir}: synthetic dataset has no masks")
    if synthetic.class_names != [c.name for c in real.spec.classes]:
        raise PairforgeError(
            f"classes differ: real {[c.name for c in real.spec.classes]} vs synthetic "
            f"{synthetic.class_names}"
        )
    if synthetic.channel_names != real.spec.channel_names:
        raise PairforgeError(
            f"channels differ: real {real.spec.channel_names} vs synthetic "
            f"{synthetic.channel_names}"
        )
    data.synthetic_images = torch.from_numpy(synthetic.images[synthetic.labeled])
    data.synthetic_masks = torch.from_numpy(synthetic.masks)
