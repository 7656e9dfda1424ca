"""Segmentation quality: confusion matrix by bincount and mean intersection-over-union."""

from __future__ import annotations

import numpy as np

from pairforge.data.codec import IGNORE_INDEX


def _as_int64_numpy(array) -> np.ndarray:
    """Return a flat int64 numpy copy of a numpy array or torch tensor (any device)."""
    if hasattr(array, "detach"):  # torch tensor: avoid importing torch when given numpy
        array = array.detach().cpu().numpy()
    return np.asarray(array).astype(np.int64, copy=False).reshape(-1)


def confusion_matrix(
    pred, target, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> np.ndarray:
    """Count pixels by (true class, predicted class).

    Args:
        pred: predicted class indices, any shape, numpy array or torch tensor of integers.
        target: true class indices, same number of elements as `pred`.
        num_classes: K; valid class indices are 0..K-1.
        ignore_index: target value meaning "unlabeled"; those pixels are not counted.
            Target values outside 0..K-1 other than this raise ValueError (a bad mask, not
            something to drop silently). Predictions outside 0..K-1 also raise.

    Returns:
        int64 array (K, K); entry [i, j] = number of pixels with target i predicted as j.
    """
    pred_flat = _as_int64_numpy(pred)
    target_flat = _as_int64_numpy(target)
    if pred_flat.shape != target_flat.shape:
        raise ValueError(
            f"pred has {pred_flat.size} elements but target has {target_flat.size}; "
            "pass arrays of the same shape"
        )
    if ignore_index is not None:
        keep = target_flat != ignore_index
        pred_flat, target_flat = pred_flat[keep], target_flat[keep]
    for name, values in (("target", target_flat), ("pred", pred_flat)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} holds class index {int(values.min())}..{int(values.max())} outside "
                f"0..{num_classes - 1} (ignore_index={ignore_index}); check num_classes"
            )
    # Row-major index target * K + pred: one bincount builds the whole matrix.
    counts = np.bincount(target_flat * num_classes + pred_flat, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def miou_from_confusion(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean and per-class intersection-over-union from a confusion matrix.

    IoU_k = TP_k / (TP_k + FP_k + FN_k). A class absent from both prediction and target
    (zero denominator) has IoU NaN and is left out of the mean.

    Args:
        confusion: (K, K) counts, rows = target, columns = prediction.

    Returns:
        (mean_iou in [0, 1] or NaN if no class occurs at all, per_class_iou float64 (K,)).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    per_class = np.full(confusion.shape[0], np.nan)
    present = union > 0
    per_class[present] = true_positive[present] / union[present]
    mean_iou = float(per_class[present].mean()) if present.any() else float("nan")
    return mean_iou, per_class


def mean_iou(pred, target, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Shortcut: mIoU of one prediction/target pair (see `confusion_matrix`)."""
    return miou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))[0]


def present_class_miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in prediction or target (1.0 when none is)."""
    mean, _ = miou_from_confusion(confusion)
    return 1.0 if np.isnan(mean) else mean
