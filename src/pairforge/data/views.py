"""Views of a dataset for models: random training crops, regular evaluation tiles, stitching.

Large measurements are cut into crops of `crop_size` px which are then downsampled to the model
`resolution` (area averaging for image channels, majority class for masks).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.dataset import Dataset
from pairforge.data.normalize import ChannelNormalizer
from pairforge.errors import PairforgeError


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    return x, False


def _resize_planes(x, plane_dims: int, factor: float, resize):
    """Shape handling shared by the downsamplers: x (..., *plane) numpy or torch, plane the last
    `plane_dims` axes ending in (H, W); `resize(t (N, *plane), (h, w)) -> (N, ..., h, w)` with
    (h, w) = (H, W) / factor rounded. Returns (..., *resized plane), numpy if x was numpy."""
    t, was_np = _as_tensor(x)
    lead = t.shape[:-plane_dims]
    size = (round(t.shape[-2] / factor), round(t.shape[-1] / factor))
    out = resize(t.reshape(-1, *t.shape[-plane_dims:]), size)
    out = out.reshape(*lead, *out.shape[1:])
    return out.numpy() if was_np else out


def downsample_image(x, factor: float):
    """Area-average (..., C, H, W) down by `factor` (any factor > 0; H/factor rounded)."""
    if factor == 1:
        return x
    return _resize_planes(
        x, 3, factor, lambda images, size: F.interpolate(images.float(), size=size, mode="area")
    )


def downsample_mask(mask, factor: float, num_classes: int, min_labeled_fraction: float = 0.5):
    """Majority-class downsampling of (..., H, W) class indices (255 = ignore, never wins).

    Each output pixel takes the class covering most of its input area, so thin or small objects
    survive as long as they dominate their block (no all-pixels-must-agree erosion). Ties go to
    the lower class index. An output pixel is labeled only where MORE than
    `min_labeled_fraction` of its block (area-weighted for non-integer factors) is labeled,
    else it is ignore (255): by default a labeled majority, so one labeled pixel out of 16 does
    not label a whole 4 x 4 block. min_labeled_fraction 0 labels every block with any labeled
    pixel (for sparse, scribble-like labels); blocks that are entirely ignore stay ignore.
    """
    if not 0.0 <= min_labeled_fraction < 1.0:
        raise PairforgeError(
            f"downsample_mask: min_labeled_fraction={min_labeled_fraction} must be in [0, 1) "
            "(0.5 = labeled majority)"
        )
    if factor == 1:
        return mask

    def majority(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        masks = masks.long()
        valid = masks != IGNORE_INDEX
        onehot = F.one_hot(torch.where(valid, masks, 0), num_classes).permute(0, 3, 1, 2).float()
        onehot = onehot * valid[:, None]
        votes = F.interpolate(onehot, size=size, mode="area")
        out = votes.argmax(dim=1)
        # votes sum to the labeled fraction of each block; the margin absorbs float rounding so
        # that exactly half labeled is "not more than half".
        out[votes.sum(dim=1) <= min_labeled_fraction + 1e-6] = IGNORE_INDEX
        return out

    return _resize_planes(mask, 2, factor, majority)


def tile_coords(height: int, width: int, tile: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering (height, width); the last row/column is flush."""
    if tile > height or tile > width:
        raise PairforgeError(
            f"tile size {tile} exceeds the image ({height} x {width}); use a smaller tile or "
            "crop size"
        )
    if not 0 <= overlap < tile:
        raise PairforgeError(f"overlap {overlap} must be in [0, tile size {tile})")
    step = tile - overlap

    def starts(n: int) -> list[int]:
        count = math.ceil((n - tile) / step) + 1
        return sorted({min(i * step, n - tile) for i in range(count)})

    return [(y, x) for y in starts(height) for x in starts(width)]


def _blend_window(tile_h: int, tile_w: int, blend: str) -> torch.Tensor:
    if blend == "mean":
        return torch.ones(tile_h, tile_w, dtype=torch.float64)
    if blend == "hann":
        # Periodic-free Hann with a floor so image borders (covered by one tile) keep weight.
        wy = torch.hann_window(tile_h + 2, periodic=False, dtype=torch.float64)[1:-1]
        wx = torch.hann_window(tile_w + 2, periodic=False, dtype=torch.float64)[1:-1]
        return torch.outer(wy, wx).clamp_min(1e-3)
    raise PairforgeError(f"unknown blend {blend!r}; use 'mean' or 'hann'")


class TileStitcher:
    """Incremental `stitch`: add (n, C, th, tw) tiles batch by batch, then `result()`; only the
    (C, H, W) float64 sums are kept, not the tiles. Tiles added in the same order give the same
    floats as `stitch`."""

    def __init__(self, channels: int, shape: tuple[int, int], tile: tuple[int, int], blend: str):
        self.window = _blend_window(*tile, blend)
        self.acc = torch.zeros(channels, *shape, dtype=torch.float64)
        self.weight = torch.zeros(shape, dtype=torch.float64)
        self.tile = tuple(tile)

    def add(self, tiles: torch.Tensor, coords) -> None:
        th, tw = self.tile
        if tiles.shape[0] != len(coords):
            raise PairforgeError(f"stitch got {tiles.shape[0]} tiles but {len(coords)} coordinates")
        for tile, (y, x) in zip(tiles.double(), coords):
            self.acc[:, y : y + th, x : x + tw] += tile * self.window
            self.weight[y : y + th, x : x + tw] += self.window

    def result(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if (self.weight == 0).any():
            raise PairforgeError("stitch: the tiles do not cover the whole image")
        return (self.acc / self.weight).to(dtype)


def stitch(tiles, coords, shape: tuple[int, int], blend: str = "mean"):
    """Weighted average of (N, C, th, tw) tiles placed at `coords` into (C, H, W)."""
    t, was_np = _as_tensor(tiles)
    _, c, th, tw = t.shape
    stitcher = TileStitcher(c, shape, (th, tw), blend)  # add() checks tiles against coords
    stitcher.add(t, coords)
    out = stitcher.result(t.dtype if t.is_floating_point() else torch.float32)
    return out.numpy() if was_np else out


def tile_image(image, tile: int, overlap: int = 0):
    """Cut (C, H, W) into tiles: returns ((N, C, tile, tile), coords)."""
    coords = tile_coords(image.shape[-2], image.shape[-1], tile, overlap)
    tiles = [image[..., y : y + tile, x : x + tile] for y, x in coords]
    stack = np.stack if isinstance(image, np.ndarray) else torch.stack
    return stack(tiles), coords


def load_tiles(
    ds: Dataset,
    ids: list[str],
    crop_size: int,
    resolution: int,
    normalizer: ChannelNormalizer | None = None,
    overlap: int = 0,
    require_mask: bool = False,
) -> dict:
    """Evaluation view: regular tiles of each measurement, downsampled to `resolution`.

    Returns {"image": float32 (N, C, res, res) normalized, "mask": int64 (N, res, res) or None,
    "source": list of (id, y, x) in full-resolution pixels, "sizes": {id: (H, W)} full-res}.
    """
    normalizer = normalizer or ds.normalizer
    factor = crop_size / resolution
    images, masks, source, sizes = [], [], [], {}
    labeled = all(ds.has_mask(i) for i in ids)
    if require_mask and not labeled:
        missing = [i for i in ids if not ds.has_mask(i)]
        raise PairforgeError(f"{ds.root}: samples {missing[:5]} have no mask in masks/")
    for sample_id in ids:
        image, mask = ds.read_pair(sample_id)
        sizes[sample_id] = tuple(image.shape[1:])
        if min(image.shape[1:]) < crop_size:
            raise PairforgeError(
                f"{ds.root}: sample {sample_id!r} is {image.shape[1]} x {image.shape[2]} px, "
                f"smaller than the {crop_size} px tiles (crop_size); remove it from the split or "
                "use a model / crop_size that fits it"
            )
        tiles, coords = tile_image(image, crop_size, overlap)
        tiles_t = torch.from_numpy(normalizer.encode(tiles))
        images.append(downsample_image(tiles_t, factor))
        if labeled:
            mtiles, _ = tile_image(mask, crop_size, overlap)
            masks.append(downsample_mask(torch.from_numpy(mtiles), factor, ds.num_classes))
        source.extend((sample_id, y, x) for y, x in coords)
    return {
        "image": torch.cat(images).float(),
        "mask": torch.cat(masks).long() if labeled else None,
        "source": source,
        "sizes": sizes,
    }


class RandomCropDataset(torch.utils.data.Dataset):
    """Training view: random `crop_size` crops, downsampled to `resolution`, paired augmentation.

    Item `index` is a pure function of (seed, epoch, index), so a resumed run sees the same
    crops. Samples are drawn with probability proportional to their area. Items are
    {"image": float32 (C, res, res) normalized, "mask": int64 (res, res)}; "mask" is present only
    when every selected sample is labeled (or `require_mask`, which makes a missing mask an error).
    """

    def __init__(
        self,
        ds: Dataset,
        ids: list[str] | None = None,
        crop_size: int = 256,
        resolution: int = 64,
        augment: bool = True,
        length: int | None = None,
        normalizer: ChannelNormalizer | None = None,
        require_mask: bool = False,
        seed: int = 0,
    ):
        ids = list(ds.ids() if ids is None else ids)
        if not ids:
            raise PairforgeError(f"{ds.root}: no samples selected for training")
        if crop_size < resolution:
            raise PairforgeError(
                f"crop_size {crop_size} is smaller than resolution {resolution}; crops are "
                "downsampled to the resolution, so crop_size must be >= resolution"
            )
        self.normalizer = normalizer or ds.normalizer
        self.crop_size, self.resolution, self.augment = crop_size, resolution, augment
        self.num_classes = ds.num_classes
        self.seed, self.epoch = seed, 0
        self.ids = ids
        self.images, self.masks = [], []
        labeled = [ds.has_mask(i) for i in ids]
        if require_mask and not all(labeled):
            missing = [i for i, ok in zip(ids, labeled) if not ok]
            raise PairforgeError(
                f"{ds.root}: samples {missing[:5]} have no mask in masks/, but this task needs "
                "masks; label them or train on the labeled split only"
            )
        self.with_mask = all(labeled)
        # A budgeted view (`data.budget`): crops lie inside the budget's labeled tiles.
        budget = getattr(ds, "budget", None)
        self.tile_size = None if budget is None else budget.tile_size
        # Per image: its labeled grid cells, sorted (drawn by index) and as a set (looked up).
        self.cells: list[list[tuple[int, int]]] = []
        self.cell_sets: list[set[tuple[int, int]]] = []
        if budget is not None and crop_size > budget.tile_size:
            raise PairforgeError(
                f"crop_size {crop_size} is larger than the {budget.tile_size} px label tiles, so "
                "no crop fits inside the labeled tiles; draw the budget with tiles of at least "
                f"{crop_size} px (data.label_tile) or lower data.crop_size"
            )
        for sample_id in ids:
            image, mask = ds.read_pair(sample_id)
            if min(image.shape[1:]) < crop_size:
                raise PairforgeError(
                    f"sample {sample_id!r} is {image.shape[2]}x{image.shape[1]} px, smaller than "
                    f"crop_size {crop_size}; lower data.crop_size"
                )
            self.images.append(torch.from_numpy(self.normalizer.encode(image)))
            self.masks.append(torch.from_numpy(mask) if self.with_mask else None)
            if budget is not None:
                self.cell_sets.append(ds.tile_grid(sample_id))
                self.cells.append(sorted(self.cell_sets[-1]))
        if budget is not None:  # each labeled tile weighs the same
            areas = np.array([len(c) for c in self.cells], dtype=np.float64)
        else:
            areas = np.array([im.shape[1] * im.shape[2] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        if length is None:
            covered = areas.sum() * (budget.tile_size**2 if budget is not None else 1)
            length = int(max(1, round(covered / crop_size**2)) * 4)
        self.length = length

    def _budget_position(self, k: int, rng, height: int, width: int) -> tuple[int, int]:
        """Top-left of a crop inside the labeled tiles of image k: a random offset from a
        random labeled tile, kept where every tile the crop touches is labeled (adjacent tiles
        of a large budget), else folded back inside the drawn tile."""
        cells, t, c = self.cells[k], self.tile_size, self.crop_size
        row, col = cells[int(rng.integers(0, len(cells)))]
        dy, dx = int(rng.integers(0, t)), int(rng.integers(0, t))
        y, x = row * t + dy, col * t + dx
        touched = {
            (r, q)
            for r in range(y // t, (y + c - 1) // t + 1)
            for q in range(x // t, (x + c - 1) // t + 1)
        }
        if y + c <= height and x + c <= width and touched <= self.cell_sets[k]:
            return y, x
        return row * t + dy % (t - c + 1), col * t + dx % (t - c + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.choice(len(self.images), p=self.weights))
        image = self.images[k]
        _, h, w = image.shape
        if self.tile_size is None:
            y = int(rng.integers(0, h - self.crop_size + 1))
            x = int(rng.integers(0, w - self.crop_size + 1))
        else:
            y, x = self._budget_position(k, rng, h, w)
        crop = image[:, y : y + self.crop_size, x : x + self.crop_size]
        factor = self.crop_size / self.resolution
        out = {"image": downsample_image(crop, factor).float()}
        if self.with_mask:
            mcrop = self.masks[k][y : y + self.crop_size, x : x + self.crop_size]
            out["mask"] = downsample_mask(mcrop, factor, self.num_classes).long()
        if self.augment:
            flip_h, flip_v, rot = rng.integers(0, 2), rng.integers(0, 2), int(rng.integers(0, 4))
            for key in out:
                t = out[key]
                if flip_h:
                    t = t.flip(-1)
                if flip_v:
                    t = t.flip(-2)
                out[key] = torch.rot90(t, rot, dims=(-2, -1)).contiguous()
        return out
