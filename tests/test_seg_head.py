"""Tests for fitting, saving and loading a segmentation head on a diffusers model folder."""

import json

import pytest
import torch

from pairforge.diffusion.schedule import make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.eval.miou import mean_iou
from pairforge.models.factory import build_model
from pairforge.seg.features import FeatureConfig, load_feature_source
from pairforge.seg.head import SegmentationHead, fit_head


def _model_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model("image", "tiny", 2, 2, 16)
    model.save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "scheduler_config.json").write_text(json.dumps(make_scheduler_config()))
    return tmp_path / "unet"


def _blobs(num_images, seed):
    """Images whose class is the sign of a smooth channel-0 field (learnable from features)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_images, 2, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    return images, (images[:, 0] > 0).long()


def test_fit_segment_save_load_roundtrip(tmp_path):
    source = load_feature_source(_model_dir(tmp_path))
    images, masks = _blobs(8, 0)
    test_images, test_masks = _blobs(4, 1)
    head, history = fit_head(
        source,
        images[:6],
        masks[:6],
        val_images=images[6:],
        val_masks=masks[6:],
        num_classes=2,
        feature_config=FeatureConfig(timesteps=(50, 150)),
        num_models=2,
        max_epochs=8,
        batch_size=128,
        info={"class_names": ["background", "blob"]},
        progress=False,
    )
    assert history["val_images"] == [0, 1]  # indices into the given validation images
    assert history["num_pixels"] == 6 * 256
    assert history["feature_bytes"] == 8 * 256 * (head.extractor.feature_dim * 2 + 12)
    prediction = head.segment(test_images)
    # Features of an untrained U-Net still encode the input: well above chance (~0.3).
    assert mean_iou(prediction.labels, test_masks, 2) > 0.6
    head.save(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    assert meta["features"]["timesteps"] == [50, 150]
    assert meta["feature_dim"] == head.extractor.feature_dim
    assert meta["class_names"] == ["background", "blob"]
    loaded = SegmentationHead.load(tmp_path / "head")
    again = loaded.segment(test_images)
    assert torch.equal(again.labels, prediction.labels)
    torch.testing.assert_close(again.entropy, prediction.entropy)


def test_load_rejects_a_model_with_other_widths(tmp_path):
    source = load_feature_source(_model_dir(tmp_path))
    images, masks = _blobs(4, 2)
    head, _ = fit_head(
        source, images, masks, num_classes=2, num_models=1, max_epochs=1, progress=False
    )
    head.save(tmp_path / "head")
    other = build_model("image", "tiny", 2, 2, 16, overrides={"block_out_channels": (8, 16)})
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(PairforgeError, match="expects"):
        SegmentationHead.load(tmp_path / "head", source=tmp_path / "other")
