"""The work behind `pairforge seg fit | predict | eval | baseline` as plain functions: the CLI
parses the flags, calls these and prints what they return."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text
from pairforge.seg.data import (
    LabeledTiles,
    TileChoice,
    class_names,
    dataset_normalizer,
    labeled_tiles,
    training_tiles,
)
from pairforge.seg.features import FeatureConfig
from pairforge.seg.head import HeadSettings, SegmentationHead, fit_head
from pairforge.seg.source import load_feature_source, tile_scale


@dataclass
class FittedHead:
    """A head fitted by `fit_head_on_dataset`, its fit history (`fit_head`) and its training
    tiles."""

    head: SegmentationHead
    history: dict[str, Any]
    train: LabeledTiles


def fit_head_on_dataset(
    run: str | Path,
    data: str | Path,
    tiles: TileChoice,
    feature_config: FeatureConfig,
    settings: HeadSettings,
    *,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> FittedHead:
    """Fit a head on the labeled tiles of a dataset folder at the feature source's scale.

    run: pairforge run or diffusers UNet2DModel folder (`load_feature_source`). The head
    records the class names, the tile scale, the normalizer (the run's, else the dataset's) and
    the source of every training tile.
    """
    source = load_feature_source(run)
    crop, res = tile_scale(source, tiles.crop_size, tiles.resolution)
    train, val = training_tiles(data, tiles, crop, res, source.normalizer)
    names = class_names(data)
    head, history = fit_head(
        source,
        train.images,
        train.masks,
        num_classes=len(names),
        settings=settings,
        val_images=val.images if val else None,
        val_masks=val.masks if val else None,
        feature_config=feature_config,
        cache_dir=cache_dir,
        device=device,
        info={
            "class_names": names,
            "crop_size": crop,
            "resolution": res,
            "normalizer": (source.normalizer or dataset_normalizer(data)).to_dict(),
            "train_tiles": [list(s) for s in train.source],
        },
    )
    return FittedHead(head, history, train)


def fit_summary(out: str | Path, fitted: FittedHead) -> str:
    """One line on a fitted head: tiles, pixels x features, noise levels, time, member val mIoU."""
    head, history = fitted.head, fitted.history
    members = history["members"]
    val_scores = [m["best_val_miou"] for m in members if m["best_val_miou"] is not None]
    levels = head.extractor.config
    return (
        f"head written to {out}: {len(fitted.train.source)} tiles, {history['num_pixels']} "
        f"pixels x {head.extractor.feature_dim} features at t {list(levels.timesteps)} (abar "
        f"{', '.join(f'{a:.3f}' for a in levels.abar)}); features "
        f"{history['feature_seconds']:.1f} s, "
        f"MLPs {history['mlp_seconds']:.1f} s"
        + (f"; member val mIoU {min(val_scores):.3f}..{max(val_scores):.3f}" if val_scores else "")
    )


def predict_to_folder(
    head: SegmentationHead,
    items: list[tuple[str, Callable[[], np.ndarray]]],
    out: Path,
    uncertainty: str,
    overlap: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Segment measurements (sample id, reader of the physical image) with sliding windows.

    Writes OUT/masks/<id>.png (class indices, uint8), OUT/uncertainty/<id>.tif (float32 map of
    `uncertainty`) and OUT/scores.json; `echo` gets one line per sample. Returns the per-image
    scores (mean of the top-10 % most uncertain pixels).
    """
    import tifffile
    from PIL import Image

    from pairforge.seg.ensemble import image_scores
    from pairforge.seg.sliding import segment_measurement

    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "uncertainty").mkdir(parents=True, exist_ok=True)
    scores = {}
    for sample_id, read in items:
        result = segment_measurement(head, read(), overlap=overlap)
        maps = result.uncertainty(uncertainty)
        Image.fromarray(result.mask.numpy().astype(np.uint8)).save(
            out / "masks" / f"{sample_id}.png"
        )
        tifffile.imwrite(out / "uncertainty" / f"{sample_id}.tif", maps.numpy().astype(np.float32))
        scores[sample_id] = float(image_scores(maps[None])[0])
        echo(f"{sample_id}: {tuple(result.mask.shape)} score {scores[sample_id]:.4f}")
    atomic_write_text(
        out / "scores.json", json.dumps({"uncertainty": uncertainty, "scores": scores})
    )
    return scores


def iou_report(
    confusion: torch.Tensor, names: list[str], split: str, num_images: int
) -> dict[str, Any]:
    """The JSON report of `seg eval` / `seg baseline`: split, tile count, mean and per-class IoU
    (None where a class is absent from both prediction and truth)."""
    from pairforge.core.metrics import miou_from_confusion

    mean, per_class = miou_from_confusion(confusion)
    return {
        "split": split,
        "num_images": num_images,
        "mean_iou": None if math.isnan(mean) else mean,
        "per_class_iou": {
            name: (None if math.isnan(v) else float(v))
            for name, v in zip(names, per_class, strict=True)
        },
    }


def evaluate_head(
    head: SegmentationHead, data: str | Path, split: str, combine: str = "mean"
) -> dict[str, Any]:
    """IoU report (`iou_report` + "combine") of a head on the tiles of a labeled split, at the
    head's scale and with its normalizer."""
    from pairforge.core.metrics import confusion_matrix
    from pairforge.data.normalize import ChannelNormalizer

    normalizer = ChannelNormalizer.from_dict(head.info.normalizer)
    tiles = labeled_tiles(data, split, head.info.crop_size, head.info.resolution, normalizer)
    prediction = head.segment(tiles.images, combine=combine)
    confusion = confusion_matrix(prediction.labels, tiles.masks, head.num_classes)
    names = head.info.class_names or class_names(data)
    report = iou_report(confusion, names, split, len(tiles.source))
    report["combine"] = combine
    return report


@dataclass(frozen=True)
class BaselineSettings:
    """How `seg baseline` trains its smp segmenter: the keyword arguments of
    `core.supervised.train_supervised` of the same names (epochs: one AdamW step per batch of
    tiles; batch size, learning rate, seed, smp architecture and encoder, no pretrained
    weights)."""

    epochs: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    arch: str = "unet"
    encoder: str = "resnet18"


def run_baseline(
    data: str | Path,
    run: str | Path | None,
    tiles: TileChoice,
    eval_split: str,
    settings: BaselineSettings,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the supervised baseline on the tiles `seg fit` uses and report IoU on `eval_split`.

    The scale and normalizer come from `run` when given (else from --resolution / --crop-size
    and the dataset). With `out` the model is saved there (safetensors + JSON). Returns
    `iou_report` + "best_epoch", "best_val_miou".
    """
    from pairforge.core.metrics import confusion_matrix
    from pairforge.core.supervised import predict_supervised, save_supervised, train_supervised

    crop, res, normalizer = _baseline_scale(data, run, tiles)
    train, val = training_tiles(data, tiles, crop, res, normalizer)
    names = class_names(data)
    model, history = train_supervised(
        train.images,
        train.masks,
        val.images if val else None,
        val.masks if val else None,
        num_classes=len(names),
        **asdict(settings),
        device=device,
        progress=progress,
    )
    test = labeled_tiles(data, eval_split, crop, res, normalizer)
    confusion = confusion_matrix(predict_supervised(model, test.images), test.masks, len(names))
    report = iou_report(confusion, names, eval_split, len(test.source))
    report["best_epoch"] = history["best_epoch"]
    report["best_val_miou"] = history["best_val_miou"]
    if out is not None:
        save_supervised(
            model,
            out,
            arch=settings.arch,
            encoder=settings.encoder,
            extra={"class_names": names, "crop_size": crop, "resolution": res,
                   "normalizer": normalizer.to_dict()},
        )  # fmt: skip
    return report


def _baseline_scale(data: str | Path, run: str | Path | None, tiles: TileChoice):
    """(crop_size, resolution, normalizer) of the baseline's tiles: the run's, else the flags'
    with the dataset's normalizer."""
    normalizer = None
    if run is not None:
        source = load_feature_source(run)
        crop, res = tile_scale(source, tiles.crop_size, tiles.resolution)
        normalizer = source.normalizer
    elif tiles.resolution is None:
        raise PairforgeError("pass --run RUN or --resolution (and --crop-size) for the tile scale")
    else:
        res, crop = tiles.resolution, tiles.crop_size or tiles.resolution
    return crop, res, normalizer or dataset_normalizer(data)
