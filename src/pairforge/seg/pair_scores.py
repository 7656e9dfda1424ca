"""The scores behind `seg filter` (pair_filter.py): a generated set's scale, a pair's pixel
agreement with a head and its per-class IoU, and the threshold (fixed, or the head's worst
agreement with its budget's select tiles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError

MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------------
# The set and its scale
# ---------------------------------------------------------------------------------------------
def read_manifest(set_dir: Path) -> dict[str, Any]:
    """SET/manifest.json; PairforgeError naming the file and the fix."""
    path = Path(set_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PairforgeError(
            f"{path}: not found; SET must be a generated pair set (pairforge generate / sample / "
            "seg autolabel write manifest.json with the generators and their label budgets)"
        ) from None
    except (OSError, ValueError) as err:
        raise PairforgeError(f"{path}: unreadable ({err}); regenerate the set") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), dict):
        raise PairforgeError(
            f"{path}: records no checkpoints; regenerate the set with pairforge generate"
        )
    return manifest


def set_scale(manifest: dict, set_dir: Path, shape: tuple[int, int]) -> float:
    """Source px per generated px: crop_size / resolution of the manifest's runs whose
    resolution is the image side (the run that made the images; they must agree)."""
    scales, sides = {}, []
    for role, entry in sorted(manifest["checkpoints"].items()):
        run_path = entry.get("path") if isinstance(entry, dict) else None
        info_path = Path(run_path or "?") / "model" / "pairforge.json"
        try:
            info = json.loads(info_path.read_text())
            crop, res = int(info["crop_size"]), int(info["resolution"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PairforgeError(
                f"{set_dir}/{MANIFEST}: checkpoint {role!r} run {run_path!r} has no readable "
                f"{info_path.name} ({type(err).__name__}); its crop size / resolution decide the "
                "scale the head sees the images at: restore the run at that path"
            ) from None
        sides.append(f"{role} {res} px")
        if res == shape[0] == shape[1]:
            scales[role] = crop / res
    if not scales or len(set(scales.values())) > 1:
        raise PairforgeError(
            f"{set_dir}: images of {shape[0]} x {shape[1]} px match "
            f"{'none' if not scales else 'several scales'} of its runs ({', '.join(sides)}; "
            f"scales {scales}); the scale of the images is unknown, so the head cannot be matched "
            "to it: filter a set written by pairforge generate unchanged"
        )
    return next(iter(scales.values()))


def scale_factor(head, scale: float, set_dir: Path) -> int:
    """Integer f >= 1 with head scale = f * set scale; PairforgeError otherwise."""
    info = head.info
    if not info.crop_size or not info.resolution or head.normalizer is None:
        raise PairforgeError(
            "the head records no crop size, resolution or normalizer, so the scale of its "
            "windows is unknown; fit it again with `pairforge seg fit`"
        )
    ratio = head.scale / scale
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise PairforgeError(
            f"{set_dir}: its images have {scale:g} source px per px but the head "
            f"({info.crop_size} px crops at {info.resolution} px) sees {head.scale:g}; the head "
            "can only see images that are finer by an integer factor; use a head fitted at the "
            "generator's scale (seg fit --run <generator run>) or a set at the head's scale"
        )
    return factor


def check_classes(head, dataset, set_dir: Path) -> None:
    """The head predicts the set's classes (count, and names where the head records them)."""
    names = [c.name for c in dataset.spec.classes]
    head_names = head.info.class_names
    if head.num_classes != len(names) or (head_names and list(head_names) != names):
        raise PairforgeError(
            f"{set_dir}: classes {names} but the head predicts {head.num_classes} classes "
            f"({head_names}); use a head fitted on the data the set's generators learned"
        )


# ---------------------------------------------------------------------------------------------
# Scores of one pair
# ---------------------------------------------------------------------------------------------
def segment_pair(head, image: np.ndarray, factor: int) -> np.ndarray:
    """int64 (H, W): the head's argmax for a generated image (C, H, W, physical units) whose
    pixels are `factor` times finer than the head's (one window: the head's tile prediction)."""
    import torch
    import torch.nn.functional as F

    from pairforge.data.views import downsample_image
    from pairforge.seg.sliding import segment_sliding

    normalized = torch.from_numpy(np.ascontiguousarray(head.normalizer.encode(image), np.float32))
    small = downsample_image(normalized, factor) if factor != 1 else normalized
    window = int(head.info.resolution)
    if tuple(small.shape[-2:]) == (window, window):
        probs = head.segment(small[None], keep_probs=True).mean_probs[0]
    else:
        probs = segment_sliding(head, small).probs
    if factor != 1:
        size = tuple(image.shape[-2:])
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs.argmax(dim=0).cpu().numpy().astype(np.int64)


def pair_scores(labels: np.ndarray, mask: np.ndarray, names: list[str]) -> dict[str, Any]:
    """{"agreement": fraction of labeled pixels where labels == mask (None: none labeled),
    "iou": {class name: IoU over labeled pixels, None where neither has the class}}."""
    valid = mask != IGNORE_INDEX
    pred, true = labels[valid], mask[valid]
    iou = {}
    for index, name in enumerate(names):
        union = int(((pred == index) | (true == index)).sum())
        iou[name] = float(((pred == index) & (true == index)).sum() / union) if union else None
    agreement = float((pred == true).mean()) if true.size else None
    return {"agreement": agreement, "iou": iou, "labeled_pixels": int(true.size)}


# ---------------------------------------------------------------------------------------------
# The threshold
# ---------------------------------------------------------------------------------------------
def select_tile_agreements(head, data: Path) -> list[dict[str, Any]]:
    """The head's pixel agreement with the true labels of each select tile of its budget, at the
    head's scale; labels are read only through a BudgetedDataset of that budget."""
    from pairforge.data.budget_view import BudgetedDataset, budget_tiles
    from pairforge.data.dataset import load_dataset

    budget = head.label_budget
    view = BudgetedDataset(load_dataset(data), budget)
    tiles = budget_tiles(view, "select", head.info.crop_size, head.info.resolution,
                         head.normalizer)  # fmt: skip
    if not tiles["source"]:
        return []
    labels = head.segment(tiles["image"]).labels.cpu().numpy()
    masks = tiles["mask"].numpy()
    t = budget.tile_size
    rows = []
    for sample_id, y, x in budget.select_tiles:
        crops = [i for i, (s, top, left) in enumerate(tiles["source"])
                 if s == sample_id and y <= top < y + t and x <= left < x + t]  # fmt: skip
        valid = masks[crops] != IGNORE_INDEX
        right = int((labels[crops] == masks[crops])[valid].sum())
        if valid.any():
            rows.append({"tile": [sample_id, y, x], "agreement": right / int(valid.sum()),
                         "pixels": int(valid.sum())})  # fmt: skip
    return rows


def keep_fraction_threshold(agreements: list[float | None], keep_fraction: float) -> float:
    """The agreement of the round(keep_fraction * N)-th best pair (at least one)."""
    values = sorted((a for a in agreements if a is not None), reverse=True)
    if not values:
        raise PairforgeError("no pair has a labeled mask pixel; nothing to filter")
    return values[max(1, round(keep_fraction * len(values))) - 1]


def choose_threshold(head, data, settings, agreements) -> dict[str, Any]:
    """{"value", "method", ...} for settings (a FilterSettings); "auto" reads only the head
    budget's select-tile labels."""
    if settings.min_agreement != "auto":
        return {"value": float(settings.min_agreement), "method": "fixed (--min-agreement)"}
    check_auto(head, data)
    tiles = select_tile_agreements(head, Path(data))
    if not tiles:
        return {
            "value": keep_fraction_threshold(agreements, settings.keep_fraction),
            "method": "no labeled select tiles in the head's budget: keep the "
            f"{settings.keep_fraction:g} of pairs with the highest agreement",
            "keep_fraction": settings.keep_fraction,
        }
    return {
        "value": min(row["agreement"] for row in tiles),
        "method": "minimum of the head's pixel agreement with the true labels of its budget's "
        "select tiles",
        "select_tiles": tiles,
    }


def check_auto(head, data) -> None:
    """--min-agreement auto needs a head with a budget and the dataset of that budget."""
    if head.label_budget is None:
        raise PairforgeError(
            "--min-agreement auto: the head records no label budget, so its select tiles are "
            "unknown; fit it with `pairforge seg fit --labels N` or give a number"
        )
    if data is None:
        raise PairforgeError(
            "--min-agreement auto needs --data DIR, the dataset of the head's label budget "
            f"({head.label_budget.dataset!r}); or give a number"
        )
