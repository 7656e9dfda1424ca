"""Tests for the supervised smp baseline: determinism, shapes, learning, model selection, errors."""

import pytest
import torch

from pairforge.core.supervised import (
    build_supervised_model,
    evaluate_supervised,
    predict_supervised,
    train_supervised,
)
from pairforge.errors import PairforgeError


def _toy(num_images: int, size: int, seed: int):
    """Smooth two-channel images; class = sign of channel 0, third class where channel 1 > 0.7.

    Smooth (bilinearly upsampled 4x4 noise) because a U-Net without a full-resolution skip
    cannot reproduce per-pixel white noise, and real images are smooth at the pixel scale.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_images, 2, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    masks = (images[:, 0] > 0).long() + 1
    masks[images[:, 1] > 0.7] = 0
    return images, masks


def test_same_seed_gives_identical_weights_and_different_seed_differs():
    images, masks = _toy(6, 16, 0)
    kwargs = dict(num_classes=3, epochs=2, batch_size=4, progress=False)
    model_a, _ = train_supervised(images[:4], masks[:4], images[4:], masks[4:], seed=3, **kwargs)
    model_b, _ = train_supervised(images[:4], masks[:4], images[4:], masks[4:], seed=3, **kwargs)
    model_c, _ = train_supervised(images[:4], masks[:4], images[4:], masks[4:], seed=4, **kwargs)
    state_a, state_b, state_c = (m.state_dict() for m in (model_a, model_b, model_c))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_learns_pixelwise_rule_and_selects_best_val_epoch():
    images, masks = _toy(12, 16, 1)
    model, history = train_supervised(
        images[:8],
        masks[:8],
        images[8:],
        masks[8:],
        num_classes=3,
        epochs=30,
        batch_size=4,
        lr=3e-3,
        progress=False,
    )
    assert history["selection"] == "val_miou"
    val_scores = [record["val_miou"] for record in history["epochs"]]
    assert history["best_val_miou"] == max(val_scores)
    assert history["epochs"][history["best_epoch"] - 1]["val_miou"] == history["best_val_miou"]
    # The returned weights are the best epoch's: re-evaluating reproduces its score.
    mean_iou, per_class = evaluate_supervised(model, images[8:], masks[8:], num_classes=3)
    assert mean_iou == pytest.approx(history["best_val_miou"])
    assert per_class.shape == (3,)
    assert mean_iou > 0.6


def test_predict_pads_sizes_that_are_not_multiples_of_the_stride():
    model = build_supervised_model(in_channels=3, num_classes=4)
    prediction = predict_supervised(model, torch.randn(3, 3, 13, 21), batch_size=2)
    assert prediction.shape == (3, 13, 21)
    assert prediction.dtype == torch.long
    assert int(prediction.min()) >= 0 and int(prediction.max()) < 4


def test_without_validation_returns_last_epoch():
    images, masks = _toy(3, 16, 2)
    masks[0, :4] = 255  # ignored pixels are allowed
    _, history = train_supervised(
        images, masks, None, None, num_classes=3, epochs=2, batch_size=2, progress=False
    )
    assert history["selection"] == "last_epoch"
    assert history["best_epoch"] == 2
    assert len(history["epochs"]) == 2


def test_bad_masks_raise_with_the_bad_value():
    images, masks = _toy(2, 16, 3)
    masks[0, 0, 0] = 7
    with pytest.raises(PairforgeError, match="0..7"):
        train_supervised(images, masks, None, None, num_classes=3, epochs=1, progress=False)
    with pytest.raises(PairforgeError, match="disagree"):
        train_supervised(images, masks[:1], None, None, num_classes=3, epochs=1, progress=False)


def test_val_every_validates_only_on_schedule_and_at_the_end():
    images, masks = _toy(6, 16, 4)
    _, history = train_supervised(
        images[:4], masks[:4], images[4:], masks[4:], num_classes=3, epochs=5, val_every=2,
        progress=False,
    )  # fmt: skip
    validated = [r["epoch"] for r in history["epochs"] if r["val_miou"] is not None]
    assert validated == [2, 4, 5]
    assert history["best_epoch"] in validated


def test_steps_sets_whole_epochs_of_at_least_that_many_steps():
    images, masks = _toy(10, 16, 0)  # 10 images, batch 4: 3 steps per epoch
    kwargs = dict(num_classes=3, epochs=50, batch_size=4, progress=False)
    _, history = train_supervised(images, masks, None, None, steps=7, **kwargs)
    assert len(history["epochs"]) == 3  # ceil(7 / 3) epochs = 9 steps >= 7; epochs=50 ignored
    _, history = train_supervised(images, masks, None, None, steps=3, **kwargs)
    assert len(history["epochs"]) == 1
    with pytest.raises(PairforgeError, match="steps=0"):
        train_supervised(images, masks, None, None, steps=0, **kwargs)
