"""Evaluation sets: a dataset folder turned into equal-size tiles (images, masks) for metrics.

Real measurements are large, synthetic samples are already at model resolution. Metrics need
both at the same scale, so a real set is cut into `crop_size` tiles downsampled to
`resolution` (as training saw them, see `pairforge.data.views.load_tiles`) and a synthetic set
is read whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError

# Split name that selects every sample of a dataset (all splits, test included).
ALL_SPLITS = "all"


@dataclass
class EvalSet:
    """Equal-size samples of one dataset, ready for metrics.

    images: float32 (N, C, H, W) in the model range (~[-1, 1]) of `normalizer`.
    masks: int64 (M, H, W) class indices 0..K-1 (255 = ignore) of the labeled samples, or None
        when none is labeled; `labeled` (M,) gives their row in `images`.
    normalizer: the ChannelNormalizer that produced `images` (decode -> physical units).
    """

    source: str
    images: np.ndarray
    masks: np.ndarray | None
    labeled: np.ndarray
    normalizer: object
    channel_names: list[str]
    class_names: list[str]
    class_colors: np.ndarray  # (K, 3) uint8 display colors
    # The splits the samples were read from, e.g. ["train"]; None: every sample of the dataset.
    splits: list[str] | None = None

    @property
    def split_label(self) -> str:
        """The splits as the CLI writes them: "train", "train,val" or "all"."""
        return ALL_SPLITS if self.splits is None else ",".join(self.splits)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_masks(self) -> int:
        return 0 if self.masks is None else int(self.masks.shape[0])

    def unit_range(self) -> np.ndarray:
        """Images mapped from [-1, 1] to [0, 1] and clipped: float32 (N, C, H, W)."""
        return np.clip((self.images + 1.0) * 0.5, 0.0, 1.0).astype(np.float32)

    def physical(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Images (or the given rows) in physical units: float32 (n, C, H, W)."""
        images = self.images if rows is None else self.images[rows]
        return self.normalizer.decode(images)


def load_eval_set(
    path: str | Path,
    *,
    split: str | list[str] | tuple[str, ...] | None = None,
    normalizer=None,
    crop_size: int | None = None,
    resolution: int | None = None,
    max_items: int | None = None,
    seed: int = 0,
) -> EvalSet:
    """Read a dataset folder as an `EvalSet`.

    Args:
        path: dataset folder (dataset.yaml, images/, masks/).
        split: only the samples of this split, or of these splits (in this order); None or
            "all": every sample. A metric's real reference should be the train split: a
            reference holding the test split leaks it into whatever is tuned on the metric.
        normalizer: ChannelNormalizer to apply; None: the dataset's own. Pass the real dataset's
            normalizer for a synthetic set so both share one value range.
        crop_size: None: read each image whole (all must have the same size). Otherwise cut
            non-overlapping `crop_size` tiles (the last row/column flush with the border).
        resolution: tiles are area-downsampled (masks by majority) to this size; None: crop_size.
        max_items: keep at most this many tiles, drawn at random with `seed` (masks follow).
    """
    from pairforge.data.dataset import load_dataset

    ds = load_dataset(path)
    normalizer = normalizer or ds.normalizer
    splits, ids = _selected_ids(ds, path, split)
    # Labeled samples first, so mask row i pairs with image row i.
    ordered = [i for i in ids if ds.has_mask(i)], [i for i in ids if not ds.has_mask(i)]
    if crop_size is None:
        image_array, mask_array = _whole_images(ds, path, ordered, normalizer, resolution)
    else:
        image_array, mask_array = _tiles(ds, ordered, crop_size, resolution, normalizer)
    image_array, mask_array, labeled = _random_subset(image_array, mask_array, max_items, seed)
    return EvalSet(
        source=str(path),
        images=image_array,
        masks=mask_array,
        labeled=labeled,
        normalizer=normalizer,
        channel_names=list(ds.spec.channel_names),
        class_names=[c.name for c in ds.spec.classes],
        class_colors=np.asarray(ds.spec.class_colors, dtype=np.uint8).reshape(-1, 3),
        splits=splits,
    )


def _selected_ids(ds, path, split) -> tuple[list[str] | None, list[str]]:
    """(split names, None for every sample; the ids of those splits, in split order)."""
    splits = [split] if isinstance(split, str) else (None if split is None else list(split))
    if splits is not None and ALL_SPLITS in splits:
        splits = None
    elif splits is not None:
        splits = list(dict.fromkeys(splits))  # a split named twice is read once
    if splits is None:
        ids = ds.ids()
    else:
        missing = [s for s in splits if s not in ds.spec.splits]
        if missing:
            raise PairforgeError(
                f"{Path(path) / 'dataset.yaml'}: no split named {missing[0]!r}; its splits are "
                f"{sorted(ds.spec.splits)}; pass one of them (comma-separated for several) or "
                f"{ALL_SPLITS!r} for every sample"
            )
        ids = [i for s in splits for i in ds.ids(s)]
    if not ids:
        label = ALL_SPLITS if splits is None else ",".join(splits)
        raise PairforgeError(f"{path}: no samples (split {label!r}); check dataset.yaml splits")
    return splits, ids


def _whole_images(ds, path, ordered, normalizer, resolution):
    """Every image whole (all of one size), area-downsampled to `resolution` when given;
    (images float32 (n, C, H, W), masks int64 (n_labeled, H, W) or None)."""
    images, masks = [], []
    for sample_id in ordered[0] + ordered[1]:
        image, mask = ds.read_pair(sample_id)
        images.append(normalizer.encode(image))
        if mask is not None:
            masks.append(mask)
    shapes = sorted({im.shape[1:] for im in images})
    if len(shapes) > 1:
        raise PairforgeError(
            f"{path}: images have different sizes {shapes[:4]}; pass a crop size "
            "(--crop-size) to cut equal tiles"
        )
    image_array = np.stack(images).astype(np.float32)
    mask_array = np.stack(masks).astype(np.int64) if masks else None
    if resolution is not None and resolution != image_array.shape[-1]:
        from pairforge.data.views import downsample_image, downsample_mask

        factor = image_array.shape[-1] / resolution
        image_array = downsample_image(image_array, factor)
        if mask_array is not None:
            mask_array = downsample_mask(mask_array, factor, ds.num_classes)
    return image_array, mask_array


def _tiles(ds, ordered, crop_size: int, resolution: int | None, normalizer):
    """`crop_size` tiles of the labeled, then the unlabeled ids, downsampled to `resolution`
    (None: crop_size); (images float32, masks int64 or None) as `_whole_images`."""
    import torch

    from pairforge.data.views import load_tiles

    resolution = resolution or crop_size
    parts = []
    for group in ordered:
        if group:
            tiles = load_tiles(ds, group, crop_size, resolution, normalizer=normalizer)
            parts.append(tiles)
    image_array = torch.cat([p["image"] for p in parts]).numpy().astype(np.float32)
    mask_parts = [p["mask"] for p in parts if p["mask"] is not None]
    mask_array = torch.cat(mask_parts).numpy().astype(np.int64) if mask_parts else None
    return image_array, mask_array


def _random_subset(image_array, mask_array, max_items: int | None, seed: int):
    """At most `max_items` rows drawn at random with `seed` (masks follow their images);
    returns (images, masks or None, image rows that have a mask)."""
    num_masks = 0 if mask_array is None else mask_array.shape[0]
    labeled = np.arange(num_masks)
    if max_items is not None and image_array.shape[0] > max_items:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(image_array.shape[0], max_items, replace=False))
        image_array = image_array[keep]
        keep_labeled = keep[keep < num_masks]
        mask_array = mask_array[keep_labeled] if len(keep_labeled) else None
        labeled = np.flatnonzero(keep < num_masks)
    return image_array, mask_array, labeled


def dataset_image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the first image of a dataset folder (to match a real set to a synthetic one)."""
    from pairforge.data.dataset import load_dataset

    ds = load_dataset(path)
    ids = ds.ids()
    if not ids:
        raise PairforgeError(f"{path}: dataset has no samples")
    return tuple(ds.read_image(ids[0]).shape[1:])


def synthetic_scale(path: str | Path) -> tuple[int, int] | None:
    """(crop_size, resolution) of the run that produced a generated dataset, else None.

    Read from the dataset's manifest.json (written by `pairforge generate`): the final stage's
    run directory holds model/pairforge.json with the crop size (px of the real measurement)
    and the model resolution. Lets real data be tiled at the scale the synthetic data shows.
    """
    import json

    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        checkpoints = json.loads(manifest_path.read_text()).get("checkpoints") or {}
    except json.JSONDecodeError:
        return None
    for role in ("sr", "joint", "sdm"):
        run_path = (checkpoints.get(role) or {}).get("path")
        info_path = Path(run_path or "") / "model" / "pairforge.json"
        if run_path and info_path.is_file():
            info = json.loads(info_path.read_text())
            if "crop_size" in info and "resolution" in info:
                return int(info["crop_size"]), int(info["resolution"])
    return None


def fill_scale_from(
    synthetic_dir: str | Path, crop_size: int | None, resolution: int | None
) -> tuple[int, int]:
    """(crop_size, resolution) with the missing ones taken from a generated dataset: the scale
    of the run that produced it (`synthetic_scale`), else its image size (1:1)."""
    if crop_size is not None and resolution is not None:
        return crop_size, resolution
    scale = synthetic_scale(synthetic_dir)
    if scale is None:
        side = dataset_image_size(synthetic_dir)[0]
        scale = (side, side)
    return crop_size or scale[0], resolution or scale[1]
