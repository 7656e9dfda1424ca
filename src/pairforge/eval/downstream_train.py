"""One training run of the downstream experiment: its training set (the budget's fit tiles +
synthetic pairs, repeated to the common epoch size), the segmenter selected on the budget's
select tiles (none: the last epoch of the fixed schedule), its test mIoU."""

from __future__ import annotations

import math
import time

from pairforge.core.seeds import downstream_pick_seed
from pairforge.data.codec import IGNORE_INDEX
from pairforge.eval.downstream_data import DownstreamData, repeat_order
from pairforge.eval.downstream_plan import PlannedRun

FIXED_SCHEDULE = "last_epoch (fixed schedule: the budget has no selection tiles)"
SELECT_TILES = "select_miou (best mIoU on the budget's selection tiles)"


def training_set(run: PlannedRun, data: DownstreamData, epoch_samples: int):
    """(images, masks) of a run: the budget's `run.n_real` fit crops, then `run.n_synthetic`
    seeded picks of its synthetic set, in a seeded order repeated to `epoch_samples` samples."""
    import torch

    key = (run.budget, run.seed)
    parts_images, parts_masks = [], []
    if run.n_real:
        fit = data.part(key, "fit")
        parts_images.append(fit["image"])
        parts_masks.append(fit["mask"])
    if run.n_synthetic:
        synthetic = data.sets[key]
        generator = torch.Generator().manual_seed(downstream_pick_seed(run.seed))
        pick = torch.randperm(synthetic.available, generator=generator)[: run.n_synthetic]
        parts_images.append(synthetic.images[pick])
        parts_masks.append(synthetic.masks[pick])
    train_images, train_masks = torch.cat(parts_images), torch.cat(parts_masks)
    order = repeat_order(train_images.shape[0], epoch_samples, run.seed)
    return train_images[order], train_masks[order]


def train_planned_run(
    run: PlannedRun, data: DownstreamData, config, epoch_samples: int, epochs: int
) -> dict:
    """Train the segmenter of one run (epoch selected on its budget's select tiles), score it
    once on test.

    Returns the run's record: {"condition", "budget", "seed", "labels" (the budget's
    summary()), "synthetic_set" (path or None), "n_real", "n_synthetic", "epoch_samples",
    "epochs", "best_epoch", "best_select_miou", "selection", "select_miou_per_epoch",
    "test_miou", "test_per_class_iou", "seconds"}.
    """
    from pairforge.core.metrics import confusion_matrix, miou_from_confusion
    from pairforge.core.supervised import predict_supervised, train_supervised

    run_start = time.perf_counter()
    key = (run.budget, run.seed)
    train_images, train_masks = training_set(run, data, epoch_samples)
    select = data.part(key, "select")
    has_select = select["image"].shape[0] > 0
    model, history = train_supervised(
        train_images,
        train_masks,
        select["image"] if has_select else None,
        select["mask"] if has_select else None,
        num_classes=data.num_classes,
        epochs=epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=run.seed,
        arch=config.arch,
        encoder=config.encoder,
        device=config.device,
        progress=False,
    )
    prediction = predict_supervised(model, data.test["image"], batch_size=config.batch_size)
    confusion = confusion_matrix(prediction, data.test["mask"], data.num_classes, IGNORE_INDEX)
    test_miou, per_class = miou_from_confusion(confusion)
    synthetic = data.sets.get(key) if run.n_synthetic else None
    return {
        "condition": run.condition,
        "budget": run.budget,
        "seed": run.seed,
        "labels": data.budgets[key].summary(),
        "synthetic_set": None if synthetic is None else str(synthetic.path),
        "n_real": run.n_real,
        "n_synthetic": run.n_synthetic,
        "epoch_samples": epoch_samples,
        "epochs": epochs,
        "best_epoch": history["best_epoch"],
        "best_select_miou": history["best_val_miou"],
        "selection": SELECT_TILES if has_select else FIXED_SCHEDULE,
        # The whole selection record: mIoU on the select tiles after each epoch (never test).
        "select_miou_per_epoch": [e.get("val_miou") for e in history.get("epochs", [])],
        "test_miou": test_miou,
        "test_per_class_iou": [None if math.isnan(v) else float(v) for v in per_class],
        "seconds": time.perf_counter() - run_start,
    }
