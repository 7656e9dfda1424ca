"""Tests for sliding-window segmentation: one window == whole image, tiling, padding, shapes."""

import numpy as np
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
    model = build_model("image", "tiny", 2, 2, 16)
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
    assert len(torch.unique(sliding.mask)) > 1  # the check is not vacuous


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
    low = segment_measurement(head, measurement, full_resolution=False)
    assert low.mask.shape == (32, 48)
