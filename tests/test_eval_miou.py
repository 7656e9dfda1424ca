"""Tests for the confusion matrix and mIoU against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from pairforge.core.metrics import confusion_matrix, mean_iou, miou_from_confusion


def test_confusion_matrix_hand_computed():
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    mean, per_class = miou_from_confusion(cm)
    # class 0: TP 1, FP 1 (2->0), FN 1 (0->1) -> 1/3; class 1: 2/3; class 2: 1/2
    np.testing.assert_allclose(per_class, [1 / 3, 2 / 3, 1 / 2])
    assert mean == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_torch_and_numpy_inputs_agree():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8), generator=generator)
    pred = torch.randint(0, 4, (2, 8, 8), generator=generator)
    np.testing.assert_array_equal(
        confusion_matrix(pred, target, 4), confusion_matrix(pred.numpy(), target.numpy(), 4)
    )
    assert confusion_matrix(pred, target, 4).sum() == 128


def test_ignore_index_pixels_are_not_counted():
    target = np.array([[0, 255], [1, 255]])
    pred = np.array([[0, 1], [1, 0]])
    cm = confusion_matrix(pred, target, num_classes=2, ignore_index=255)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])
    assert miou_from_confusion(cm)[0] == 1.0


def test_absent_class_is_nan_and_excluded_from_mean():
    target = np.array([0, 0, 2, 2])
    pred = np.array([0, 0, 2, 0])
    mean, per_class = miou_from_confusion(confusion_matrix(pred, target, num_classes=3))
    assert math.isnan(per_class[1])
    np.testing.assert_allclose(per_class[[0, 2]], [2 / 3, 1 / 2])
    assert mean == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_class_only_predicted_counts_as_zero():
    # Class 1 never in the target but predicted once: IoU 0, included in the mean.
    target = np.array([0, 0, 0])
    pred = np.array([0, 0, 1])
    mean, per_class = miou_from_confusion(confusion_matrix(pred, target, num_classes=2))
    np.testing.assert_allclose(per_class, [2 / 3, 0.0])
    assert mean == pytest.approx(1 / 3)
    assert mean_iou(pred, target, 2) == pytest.approx(1 / 3)


def test_out_of_range_class_raises():
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), num_classes=2)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.array([0, 1, 1]), np.array([0, 1]), num_classes=2)


def test_all_ignored_gives_nan_mean():
    cm = confusion_matrix(np.array([0, 1]), np.array([255, 255]), num_classes=2)
    assert cm.sum() == 0
    mean, per_class = miou_from_confusion(cm)
    assert math.isnan(mean) and np.isnan(per_class).all()
