"""One training run of the downstream experiment: its training set (real crops + synthetic
pairs, repeated to the common epoch size), the segmenter selected on val, its test mIoU."""

from __future__ import annotations

import math
import time

from pairforge.core.seeds import downstream_pick_seed
from pairforge.data.codec import IGNORE_INDEX
from pairforge.eval.downstream_data import DownstreamData, real_training_crops, repeat_order
from pairforge.eval.downstream_plan import PlannedRun


def training_set(run: PlannedRun, data: DownstreamData, epoch_samples: int):
    """(images, masks) of a run: `run.n_real` seeded real crops, then `run.n_synthetic` seeded
    picks of the synthetic pairs, in a seeded order repeated to `epoch_samples` samples."""
    import torch

    parts_images, parts_masks = [], []
    if run.n_real:
        images, masks = real_training_crops(
            data.real,
            data.train_ids,
            run.n_real,
            data.crop_size,
            data.resolution,
            data.normalizer,
            run.seed,
        )
        parts_images.append(images)
        parts_masks.append(masks)
    if run.n_synthetic:
        generator = torch.Generator().manual_seed(downstream_pick_seed(run.seed))
        pick = torch.randperm(data.available, generator=generator)[: run.n_synthetic]
        parts_images.append(data.synthetic_images[pick])
        parts_masks.append(data.synthetic_masks[pick])
    train_images, train_masks = torch.cat(parts_images), torch.cat(parts_masks)
    order = repeat_order(train_images.shape[0], epoch_samples, run.seed)
    return train_images[order], train_masks[order]


def train_planned_run(
    run: PlannedRun, data: DownstreamData, config, epoch_samples: int, epochs: int
) -> dict:
    """Train the segmenter of one run (epoch selected on val), score it once on test.

    Returns the run's record: {"condition", "budget", "seed", "n_real", "n_synthetic",
    "epoch_samples", "epochs", "best_epoch", "best_val_miou", "selection",
    "val_miou_per_epoch", "test_miou", "test_per_class_iou", "seconds"}.
    """
    from pairforge.core.metrics import confusion_matrix, miou_from_confusion
    from pairforge.core.supervised import predict_supervised, train_supervised

    run_start = time.perf_counter()
    train_images, train_masks = training_set(run, data, epoch_samples)
    model, history = train_supervised(
        train_images,
        train_masks,
        data.val["image"],
        data.val["mask"],
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
    return {
        "condition": run.condition,
        "budget": run.budget,
        "seed": run.seed,
        "n_real": run.n_real,
        "n_synthetic": run.n_synthetic,
        "epoch_samples": epoch_samples,
        "epochs": epochs,
        "best_epoch": history["best_epoch"],
        "best_val_miou": history["best_val_miou"],
        "selection": history.get("selection"),
        # The whole selection record: val mIoU after each epoch (test is never looked at).
        "val_miou_per_epoch": [e.get("val_miou") for e in history.get("epochs", [])],
        "test_miou": test_miou,
        "test_per_class_iou": [None if math.isnan(v) else float(v) for v in per_class],
        "seconds": time.perf_counter() - run_start,
    }
