"""The work behind `pairforge seg fit | predict | eval | baseline` as plain functions: the CLI
parses the flags, calls these and prints what they return."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text
from pairforge.seg.data import (
    BudgetTiles,
    LabeledTiles,
    TileChoice,
    budget_tile_sets,
    class_names,
    dataset_normalizer,
    draw_budget,
    labeled_tiles,
    training_tiles,
)
from pairforge.seg.features import FeatureConfig
from pairforge.seg.head import HeadInfo, HeadSettings, SegmentationHead, fit_head
from pairforge.seg.source import load_feature_source, tile_scale


@dataclass
class FittedHead:
    """A head fitted by `fit_head_on_dataset`, its fit history (`fit_head`), its label budget's
    tiles and the warnings to show the user."""

    head: SegmentationHead
    history: dict[str, Any]
    tiles: BudgetTiles
    warnings: list[str] = field(default_factory=list)

    @property
    def train(self) -> LabeledTiles:
        return self.tiles.fit


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
    """Fit a head on a label budget of a dataset folder at the feature source's scale.

    run: pairforge run or diffusers UNet2DModel folder (`load_feature_source`). The budget's
    fit tiles train the ensemble; its select tiles stop it early (none: the ensemble holds out
    `settings.val_fraction` of the fit tiles, still inside the budget). A feature run trained
    on masks must have read only labels inside the budget (`check_feature_run`). The head
    records the class names, the tile scale, the normalizer (the run's, else the dataset's),
    the budget, every training tile and how early stopping was done.
    """
    source = load_feature_source(run)
    crop, res = tile_scale(source, tiles.crop_size, tiles.resolution)
    dataset, budget = draw_budget(data, tiles, crop)
    warnings = check_feature_run(source, run, budget)
    chosen = budget_tile_sets(dataset, budget, crop, res, source.normalizer)
    train, select = chosen.fit, chosen.select
    if train.images.shape[0] == 0:
        raise PairforgeError(
            f"--labels {budget.label}: {budget.describe()} leaves no fit tile; ask for more tiles"
        )
    names = class_names(data)
    head, history = fit_head(
        source,
        train.images,
        train.masks,
        num_classes=len(names),
        settings=settings,
        val_images=select.images if select else None,
        val_masks=select.masks if select else None,
        feature_config=feature_config,
        cache_dir=cache_dir,
        device=device,
        info={
            "class_names": names,
            "crop_size": crop,
            "resolution": res,
            "normalizer": (source.normalizer or dataset_normalizer(data)).to_dict(),
            "label_budget": budget.to_dict(),
            "train_tiles": [list(s) for s in train.source],
        },
    )
    recorded = head.info.model_dump(mode="json", exclude_unset=True)
    head.info = HeadInfo.model_validate(
        {**recorded, "selection": _selection_record(chosen, history)}
    )
    return FittedHead(head, history, chosen, warnings)


def _selection_record(chosen: BudgetTiles, history: dict[str, Any]) -> dict[str, Any]:
    """How the ensemble was stopped early, for head.json: on the budget's select tiles, or
    on a holdout of its fit tiles (positions in train_tiles) when the budget has none."""
    best = [m["best_epoch"] for m in history["members"]]
    if chosen.select is not None:
        return {
            "early_stopping": "select tiles of the label budget",
            "select_tiles": [list(s) for s in chosen.select.source],
            "best_epochs": best,
        }
    return {"early_stopping": "holdout of the fit tiles (the budget has no select tiles)",
            "holdout_tiles": [int(i) for i in history["val_images"]], "best_epochs": best}  # fmt: skip


def check_feature_run(source, run: str | Path, budget) -> list[str]:
    """The labels a feature model saw must lie inside the head's budget.

    A pairforge run trained on masks (a joint run: its features carry its labels) passes only
    when its label budget lies inside `budget` (`require_covered`; trained on every mask ->
    PairforgeError at any budget). Returns warnings: a foreign diffusers folder cannot be
    checked.
    """
    from pairforge.data.budget import require_covered

    if not source.is_run:
        return [
            f"feature model {run} is not a pairforge run: pairforge cannot check which labels it "
            "saw; if it was trained on masks, the head's label count is too low"
        ]
    if source.reads_masks:
        require_covered(
            source.label_budget,
            budget,
            f"feature run {run}",
            fix="train the feature run on the same label budget (train --labels / --label-seed "
            "/ --label-tile), or use an image-only run",
        )
    return []


def fit_summary(out: str | Path, fitted: FittedHead) -> str:
    """One line on a fitted head: budget, tiles, pixels x features, noise levels, time, member
    val mIoU and how early stopping was done."""
    head, history = fitted.head, fitted.history
    members = history["members"]
    val_scores = [m["best_val_miou"] for m in members if m["best_val_miou"] is not None]
    levels = head.extractor.config
    stopping = (
        "early stopping on the budget's select tiles"
        if fitted.tiles.select is not None
        else "no select tiles in the budget: early stopping on a holdout of its fit tiles"
    )
    return (
        f"head written to {out}: {fitted.tiles.budget.describe()}; {len(fitted.train.source)} "
        f"fit tiles, {history['num_pixels']} "
        f"pixels x {head.extractor.feature_dim} features at t {list(levels.timesteps)} (abar "
        f"{', '.join(f'{a:.3f}' for a in levels.abar)}); features "
        f"{history['feature_seconds']:.1f} s, "
        f"MLPs {history['mlp_seconds']:.1f} s; {stopping}"
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
    from pairforge.seg.sliding import segment_measurement_maps

    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "uncertainty").mkdir(parents=True, exist_ok=True)
    scores = {}
    for sample_id, read in items:
        # In bands of full-resolution rows: bounded memory (sliding.segment_measurement_maps).
        labels, maps = segment_measurement_maps(head, read(), uncertainty, overlap=overlap)
        Image.fromarray(labels.astype(np.uint8)).save(out / "masks" / f"{sample_id}.png")
        tifffile.imwrite(out / "uncertainty" / f"{sample_id}.tif", maps)
        scores[sample_id] = float(image_scores(torch.from_numpy(maps)[None])[0])
        echo(f"{sample_id}: {labels.shape} score {scores[sample_id]:.4f}")
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
    """IoU report (`iou_report` + "combine", "labels") of a head on the tiles of a labeled
    split, at the head's scale and with its normalizer. "labels": the head's label budget
    summary (tiles, fit / select tiles, pixels) - the training labels behind the score."""
    from pairforge.core.metrics import confusion_matrix
    from pairforge.data.normalize import ChannelNormalizer

    normalizer = ChannelNormalizer.from_dict(head.info.normalizer)
    tiles = labeled_tiles(data, split, head.info.crop_size, head.info.resolution, normalizer)
    prediction = head.segment(tiles.images, combine=combine)
    confusion = confusion_matrix(prediction.labels, tiles.masks, head.num_classes)
    names = head.info.class_names or class_names(data)
    report = iou_report(confusion, names, split, len(tiles.source))
    report["combine"] = combine
    report["labels"] = head_labels(head)
    budget = head.label_budget
    if budget is not None and budget.split == split:
        report["warnings"] = [
            f"split {split!r} is the head's label split: its own training tiles are scored too"
        ]
    return report


def head_labels(head: SegmentationHead) -> dict[str, Any]:
    """The budget summary of a head; a head from before budgets: what it recorded (its
    training tile count; its selection labels are unknown)."""
    budget = head.label_budget
    if budget is not None:
        return budget.summary()
    train_tiles = head.info.train_tiles
    return {
        "budget": None,
        "tiles": None if train_tiles is None else len(train_tiles),
        "note": "head fitted before label budgets were recorded: its early-stopping labels "
        "are not known; fit it again with --labels",
    }


@dataclass(frozen=True)
class BaselineSettings:
    """How `seg baseline` trains its smp segmenter: the keyword arguments of
    `core.supervised.train_supervised` of the same names (epochs: one AdamW step per batch of
    tiles; steps: None, or at least this many steps in whole epochs instead of `epochs`; batch
    size, learning rate, seed, smp architecture and encoder, no pretrained weights)."""

    epochs: int = 400
    steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    arch: str = "unet"
    encoder: str = "resnet18"

    def train_kwargs(self) -> dict[str, Any]:
        """These settings as `train_supervised` keyword arguments (a subclass's extra fields
        are not among them)."""
        return {f.name: getattr(self, f.name) for f in fields(BaselineSettings)}


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
    """Train the supervised baseline on the label budget `seg fit` uses; report IoU on
    `eval_split`.

    The budget's fit tiles train it, its select tiles choose the best epoch (no select tiles:
    fixed schedule, the last epoch). The scale and normalizer come from `run` when given (else
    from --resolution / --crop-size and the dataset). With `out` the model is saved there
    (safetensors + JSON, with the budget). Returns `iou_report` + "best_epoch",
    "best_val_miou", "selection", "labels" (the budget's summary).
    """
    from pairforge.core.supervised import save_supervised, train_supervised

    crop, res, normalizer = _baseline_scale(data, run, tiles)
    chosen = training_tiles(data, tiles, crop, res, normalizer)
    train, select = chosen.fit, chosen.select
    names = class_names(data)
    model, history = train_supervised(
        train.images,
        train.masks,
        select.images if select else None,
        select.masks if select else None,
        num_classes=len(names),
        **settings.train_kwargs(),
        device=device,
        progress=progress,
    )
    report = supervised_report(
        model, history, data, eval_split, (crop, res, normalizer), chosen, names
    )
    if out is not None:
        save_supervised(
            model, out, arch=settings.arch, encoder=settings.encoder,
            extra=supervised_extra(report, (crop, res, normalizer), chosen.budget, names),
        )  # fmt: skip
    return report


def supervised_report(model, history, data, eval_split, scale, chosen, names) -> dict[str, Any]:
    """IoU report of a trained smp segmenter on `eval_split` (tiles at `scale` = (crop, res,
    normalizer)) + "best_epoch", "best_val_miou", "selection", "labels" (the budget of
    `chosen`, the TileSets it trained and selected on)."""
    from pairforge.core.metrics import confusion_matrix
    from pairforge.core.supervised import predict_supervised

    crop, res, normalizer = scale
    test = labeled_tiles(data, eval_split, crop, res, normalizer)
    confusion = confusion_matrix(predict_supervised(model, test.images), test.masks, len(names))
    report = iou_report(confusion, names, eval_split, len(test.source))
    report["best_epoch"] = history["best_epoch"]
    report["best_val_miou"] = history["best_val_miou"]
    report["selection"] = (
        "best epoch on the budget's select tiles"
        if chosen.select is not None
        else "no select tiles in the budget: fixed schedule, last epoch"
    )
    report["labels"] = chosen.budget.summary()
    return report


def supervised_extra(report: dict, scale, budget, names) -> dict[str, Any]:
    """What a saved supervised segmenter's JSON records beside its weights."""
    crop, res, normalizer = scale
    return {"class_names": names, "crop_size": crop, "resolution": res,
            "normalizer": normalizer.to_dict(), "label_budget": budget.to_dict(),
            "best_epoch": report["best_epoch"], "selection": report["selection"]}  # fmt: skip


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
