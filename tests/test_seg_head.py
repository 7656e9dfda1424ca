"""Tests for fitting, saving and loading a segmentation head on a diffusers model folder."""

import json

import pytest
import torch

from pairforge.core.metrics import mean_iou
from pairforge.data.codec import MaskCodec
from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model
from pairforge.seg.features import FeatureConfig
from pairforge.seg.head import HeadSettings, SegmentationHead, fit_head
from pairforge.seg.pixels import extract_pixel_features
from pairforge.seg.source import FeatureSource, load_feature_source


def _model_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
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
        settings=HeadSettings(num_models=2, max_epochs=8, batch_size=128),
        info={"class_names": ["background", "blob"]},
        progress=False,
    )
    assert history["val_images"] == [0, 1]  # indices into the given validation images
    assert history["num_pixels"] == 6 * 256
    # Compare with the bytes a real extraction of the same images allocates.
    allocated = sum(
        extract_pixel_features(head.extractor, x, y, progress=False).allocated_bytes
        for x, y in ((images[:6], masks[:6]), (images[6:], masks[6:]))
    )
    assert history["feature_bytes"] == allocated
    prediction = head.segment(test_images)
    # Features of an untrained U-Net still encode the input: well above chance (~0.3).
    assert mean_iou(prediction.labels, test_masks, 2) > 0.6
    head.save(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    assert meta["features"]["timesteps"] == [50, 150]
    # Recorded noise levels: abar / log-SNR of those timesteps on the model's (linear) schedule.
    abar = alphas_cumprod(make_scheduler_config())
    assert meta["features"]["abar"] == pytest.approx([float(abar[50]), float(abar[150])])
    assert meta["features"]["logsnr"] == pytest.approx(
        [float((abar[t] / (1 - abar[t])).log()) for t in (50, 150)]
    )
    assert meta["feature_dim"] == head.extractor.feature_dim
    assert meta["class_names"] == ["background", "blob"]
    loaded = SegmentationHead.load(tmp_path / "head")
    again = loaded.segment(test_images)
    assert torch.equal(again.labels, prediction.labels)
    torch.testing.assert_close(again.entropy, prediction.entropy)


@pytest.mark.parametrize(
    ("pixels", "over_labels", "scale"), [(None, True, 1), (64, True, 4), (64, False, 1)]
)
def test_sampled_pixels_train_as_many_steps_as_every_pixel(tmp_path, pixels, over_labels, scale):
    """With 64 of 256 pixels per tile stored, epochs and patience count passes over the labeled
    pixels: 4x the epochs over the stored ones (unless epochs_over_labels is off)."""
    source = load_feature_source(_model_dir(tmp_path))
    images, masks = _blobs(4, 0)
    masks[0, :8] = 255  # ignore pixels are not labels: 4 * 256 - 128 labeled, 4 * 64 stored
    settings = HeadSettings(num_models=1, max_epochs=2, patience=1, pixels_per_image=pixels,
                            epochs_over_labels=over_labels, val_fraction=0.0)  # fmt: skip
    _, history = fit_head(source, images, masks, num_classes=2, settings=settings,
                          feature_config=FeatureConfig(timesteps=(50,)), progress=False)  # fmt: skip
    assert history["epoch_scale"] == scale
    # No validation pixels: every member trains all its (scaled) epochs.
    assert history["members"][0]["epochs_run"] == 2 * scale


def _saved_one_member_head(tmp_path, seed: int):
    """A 1-member, 1-epoch head on the tiny model, saved to tmp_path/head."""
    source = load_feature_source(_model_dir(tmp_path))
    images, masks = _blobs(4, seed)
    head, _ = fit_head(
        source,
        images,
        masks,
        num_classes=2,
        settings=HeadSettings(num_models=1, max_epochs=1),
        progress=False,
    )
    head.save(tmp_path / "head")
    return head, source, images


def test_load_rejects_a_model_with_other_widths(tmp_path):
    _saved_one_member_head(tmp_path, seed=2)
    other = build_model("UNet2DModel", "tiny", 2, 2, 16, overrides={"block_out_channels": (8, 16)})
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(PairforgeError, match="expects"):
        SegmentationHead.load(tmp_path / "head", source=tmp_path / "other")


def test_head_fitted_on_one_schedule_refuses_another(tmp_path):
    head, source, images = _saved_one_member_head(tmp_path, seed=3)
    # Same weights, same timesteps 50/150/250, but a cosine schedule: other noise levels.
    cosine = tmp_path / "cosine"
    source.model.save_pretrained(cosine)
    (cosine / "scheduler_config.json").write_text(json.dumps(make_scheduler_config("cosine")))
    expected = (
        r"at timesteps \[50, 150, 250\] \(abar \[0.97, 0.7859, 0.5214\]\) but .* \(abar \[0.9917"
    )
    with pytest.raises(PairforgeError, match=expected):
        SegmentationHead.load(tmp_path / "head", source=cosine)
    # A head.json without abar (saved before it was recorded) still loads.
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    for key in ("abar", "logsnr", "noise_levels", "mask_mean", "class_fractions"):
        del meta["features"][key]
    (tmp_path / "head" / "head.json").write_text(json.dumps(meta))
    loaded = SegmentationHead.load(tmp_path / "head")
    assert torch.equal(loaded.segment(images).labels, head.segment(images).labels)


def _joint_source(num_classes=3, image_channels=2):
    torch.manual_seed(0)
    codec = MaskCodec(num_classes, "onehot")
    channels = image_channels + codec.channels
    model = build_model("UNet2DModel", "tiny", channels, channels, 16)
    return FeatureSource(model, make_scheduler_config(), image_channels, extra={"codec": codec})


def test_mean_fill_code_comes_from_the_head_training_masks(tmp_path):
    source = _joint_source()
    images, blobs = _blobs(4, 4)
    masks = blobs * 2  # classes 0 and 2; class 1 absent
    masks[0, :8] = 255  # ignored pixels do not count
    head, _ = fit_head(
        source, images, masks, num_classes=3, settings=HeadSettings(num_models=1, max_epochs=1), progress=False,
        feature_config=FeatureConfig(timesteps=(50,), mask_fill="mean"),
    )  # fmt: skip
    labeled = masks[masks != 255]
    fractions = [float((labeled == k).float().mean()) for k in range(3)]
    config = head.extractor.config
    assert config.class_fractions == pytest.approx(fractions)
    assert config.mask_mean == pytest.approx([2 * p - 1 for p in fractions])
    assert config.mask_mean[1] == -1.0  # an absent class: its one-hot channel is always -1
    # Recorded in the head and used again after loading.
    head.save(tmp_path / "head")
    saved = json.loads((tmp_path / "head" / "head.json").read_text())["features"]
    assert saved["mask_mean"] == pytest.approx(config.mask_mean)
    assert saved["class_fractions"] == pytest.approx(fractions)
    assert FeatureConfig.from_dict(saved) == config
    # The run's own recorded class fractions win over the head's labels.
    source.extra["class_fractions"] = [0.5, 0.25, 0.25]
    head, _ = fit_head(
        source, images, masks, num_classes=3, settings=HeadSettings(num_models=1, max_epochs=1), progress=False,
        feature_config=FeatureConfig(timesteps=(50,), mask_fill="mean"),
    )  # fmt: skip
    assert head.extractor.config.mask_mean == pytest.approx([0.0, -0.5, -0.5])
    # Without a codec the fill cannot be computed.
    del source.extra["codec"]
    with pytest.raises(PairforgeError, match="no mask codec"):
        fit_head(
            source, images, masks, num_classes=3, settings=HeadSettings(num_models=1, max_epochs=1), progress=False,
            feature_config=FeatureConfig(mask_fill="mean"),
        )  # fmt: skip
