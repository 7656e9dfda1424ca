"""Tests for sliding-window segmentation: one window == whole image, tiling, padding, shapes."""

import numpy as np
import pytest
import torch

from pairforge.data.normalize import ChannelNormalizer
from pairforge.diffusion.schedule import make_scheduler_config
from pairforge.models.factory import build_model
from pairforge.seg.ensemble import EnsembleConfig, PixelEnsemble
from pairforge.seg.features import DiffusionFeatureExtractor, FeatureConfig
from pairforge.seg.head import SegmentationHead
from pairforge.seg.sliding import segment_measurement, segment_sliding


def _head(resolution=16, crop_size=None, normalizer=None):
    torch.manual_seed(0)
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
    extractor = DiffusionFeatureExtractor(
        model, make_scheduler_config(), config=FeatureConfig(timesteps=(50, 250))
    )
    ensemble = PixelEnsemble(EnsembleConfig(extractor.feature_dim, 3, num_models=3)).eval()
    for member in ensemble.members:  # non-trivial BatchNorm statistics
        for layer in member:
            if isinstance(layer, torch.nn.BatchNorm1d):
                layer.running_var.fill_(0.01)
    info = {"resolution": resolution, "crop_size": crop_size or resolution}
    info["normalizer"] = normalizer.to_dict() if normalizer else None
    return SegmentationHead(extractor, ensemble, info)


def test_one_window_equals_whole_image_output():
    head = _head()
    image = torch.randn(2, 16, 16)
    whole = head.segment(image[None], keep_probs=True)
    sliding = segment_sliding(head, image, window=16, overlap=8)
    assert torch.equal(sliding.mask, whole.labels[0])
    torch.testing.assert_close(sliding.probs, whole.mean_probs[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sliding.entropy, whole.entropy[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliding.disagreement, whole.disagreement[0])
    torch.testing.assert_close(sliding.js, whole.js[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliding.uncertainty(), sliding.js)  # JS is the default
    assert len(torch.unique(sliding.mask)) > 1  # the check is not vacuous
    assert float(sliding.js.max()) > 1e-3  # members really disagree somewhere


def test_blended_js_is_entropy_of_blend_minus_blended_member_entropy():
    head = _head()
    image = torch.randn(2, 24, 40)
    result = segment_sliding(head, image, window=16, overlap=8, blend="mean")
    # Pixel (0, 0) lies in one window only: its JS is that window's JS.
    corner = head.segment(image[None, :, :16, :16])
    assert float(result.js[0, 0]) == pytest.approx(float(corner.js[0, 0, 0]), abs=1e-5)
    # Pixel (4, 12) lies in the windows at x = 0 and x = 8 (rows 0..15): an equal mixture.
    left = head.segment(image[None, :, :16, :16], keep_probs=True)
    right = head.segment(image[None, :, :16, 8:24], keep_probs=True)
    probs = (left.mean_probs[0, :, 4, 12] + right.mean_probs[0, :, 4, 4]) / 2
    member = (left.member_entropy[0, 4, 12] + right.member_entropy[0, 4, 4]) / 2
    expected = float(-(probs * probs.log()).sum() - member)
    assert float(result.js[4, 12]) == pytest.approx(expected, abs=1e-5)
    assert float(result.js.min()) >= 0.0
    assert float(result.js.max()) <= np.log(3) + 1e-5  # log M, M = 3 members


def test_non_overlapping_windows_equal_per_tile_segmentation():
    head = _head()
    image = torch.randn(2, 32, 48)
    sliding = segment_sliding(head, image, window=16, overlap=0, blend="mean")
    assert sliding.mask.shape == (32, 48) and sliding.probs.shape == (3, 32, 48)
    tile = head.segment(image[None, :, 16:32, 32:48], keep_probs=True)
    assert torch.equal(sliding.mask[16:32, 32:48], tile.labels[0])
    torch.testing.assert_close(sliding.probs[:, 16:32, 32:48], tile.mean_probs[0])


def test_overlapping_windows_cover_odd_sizes_and_small_images():
    head = _head()
    result = segment_sliding(head, torch.randn(2, 40, 27), window=16, overlap=6)
    assert result.mask.shape == result.entropy.shape == (40, 27)
    torch.testing.assert_close(result.probs.sum(dim=0), torch.ones(40, 27))
    assert float(result.entropy.min()) >= 0 and float(result.entropy.max()) <= np.log(3) + 1e-5
    small = segment_sliding(head, torch.randn(2, 10, 5), window=16)
    assert small.mask.shape == (10, 5)


def test_segment_measurement_works_at_training_scale_and_returns_full_size():
    normalizer = ChannelNormalizer(low=[0.0, -5.0], high=[1.0, 5.0])
    head = _head(resolution=16, crop_size=32, normalizer=normalizer)
    measurement = np.random.default_rng(0).uniform(0, 1, size=(2, 64, 96)).astype(np.float32)
    result = segment_measurement(head, measurement)
    assert result.mask.shape == (64, 96)
    assert result.js.shape == (64, 96) and float(result.js.min()) >= 0.0
    low = segment_measurement(head, measurement, full_resolution=False)
    assert low.mask.shape == (32, 48)


@pytest.mark.parametrize("size", [(64, 96), (70, 99), (33, 200)])
def test_upsample_rows_equals_whole_bilinear_interpolation(size):
    from pairforge.seg.sliding import upsample_rows

    maps = torch.rand(5, 17, 25, generator=torch.Generator().manual_seed(1))
    whole = torch.nn.functional.interpolate(maps[None], size=size, mode="bilinear",
                                            align_corners=False)[0]  # fmt: skip
    for band in (1, 7, size[0]):
        rows = torch.cat([upsample_rows(maps, size, start, min(size[0], start + band))
                          for start in range(0, size[0], band)], dim=1)  # fmt: skip
        assert rows.shape == whole.shape
        assert float((rows - whole).abs().max()) < 1e-6


@pytest.mark.parametrize("kind", ["js", "entropy", "disagreement"])
def test_banded_measurement_maps_equal_segment_measurement(kind):
    from pairforge.seg.sliding import segment_measurement_maps

    normalizer = ChannelNormalizer(low=[0.0, -5.0], high=[1.0, 5.0])
    head = _head(resolution=16, crop_size=32, normalizer=normalizer)
    measurement = np.random.default_rng(0).uniform(0, 1, size=(2, 70, 99)).astype(np.float32)
    full = segment_measurement(head, measurement)
    labels, values = segment_measurement_maps(head, measurement, kind, band_rows=9)
    assert labels.dtype == np.uint8 and values.dtype == np.float32
    assert np.array_equal(labels, full.mask.numpy())
    assert np.allclose(values, full.uncertainty(kind).numpy(), atol=1e-6)
