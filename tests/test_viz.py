"""Tests of the picture helpers: colors, overlays, grid and uncertainty files."""

import numpy as np
import pytest
import torch
from PIL import Image

from pairforge.errors import PairforgeError
from pairforge.viz import (
    colorize_channel,
    colorize_mask,
    overlay_mask,
    save_grid,
    save_uncertainty,
)

COLORS = [(70, 70, 70), (230, 180, 40), (40, 90, 200)]


def test_colorize_channel_gray_maps_range_to_0_255():
    x = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    rgb = colorize_channel(x, 0.0, 1.0, cmap="gray")
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 255]  # clipped above vmax
    viridis = colorize_channel(x, 0.0, 1.0)
    assert viridis[0, 0].tolist() != viridis[0, 2].tolist()
    assert viridis[0, 0, 2] > viridis[0, 0, 1]  # viridis starts purple-blue


def test_colorize_mask_and_overlay_put_colors_where_the_mask_says():
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize_mask(mask, COLORS)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [230, 180, 40] and rgb[1, 0].tolist() == [40, 90, 200]
    assert rgb[1, 1].tolist() == [0, 0, 0]  # ignore index: no color
    base = np.zeros((2, 2, 3), np.uint8)
    blended = overlay_mask(base, mask, COLORS, alpha=0.5)
    assert blended[0, 1].tolist() == [115, 90, 20]


def test_save_grid_layout_and_pixels(tmp_path):
    images = torch.zeros(3, 2, 8, 10)
    images[:, 1] = 1.0
    masks = torch.zeros(3, 8, 10, dtype=torch.long)
    masks[:, :4] = 1
    path = save_grid(
        tmp_path / "grid.png",
        images,
        masks,
        channel_names=["intensity", "depth"],
        class_colors=COLORS,
        value_ranges=[(0, 1), (0, 1)],
        cmap="gray",
    )
    picture = np.asarray(Image.open(path))
    # 3 rows of 8 px, 4 columns (2 channels, mask, overlay) of 10 px, 2 px separators.
    assert picture.shape == (3 * 8 + 2 * 2, 4 * 10 + 3 * 2, 3)
    assert picture[0, 0].tolist() == [0, 0, 0]  # channel 0 at vmin
    assert picture[0, 12].tolist() == [255, 255, 255]  # channel 1 at vmax
    mask_x = 2 * 12
    assert picture[1, mask_x].tolist() == [230, 180, 40]  # mask rows :4 are grain
    assert picture[6, mask_x].tolist() == [70, 70, 70]


def test_save_grid_limits_items_and_titles(tmp_path):
    images = np.random.default_rng(0).normal(size=(20, 1, 6, 6)).astype(np.float32)
    path = save_grid(tmp_path / "a.png", images, None, max_items=4)
    assert Image.open(path).size == (6, 4 * 6 + 3 * 2)  # PIL size is (width, height)
    titled = save_grid(tmp_path / "b.png", images, None, max_items=2, title="samples")
    assert Image.open(titled).size[1] > 2 * 6


def test_save_grid_rejects_mismatches(tmp_path):
    images = np.zeros((2, 2, 4, 4))
    with pytest.raises(PairforgeError, match="channel names"):
        save_grid(tmp_path / "x.png", images, channel_names=["a"])
    with pytest.raises(PairforgeError, match="masks shape"):
        save_grid(tmp_path / "x.png", images, np.zeros((2, 5, 4)))
    with pytest.raises(PairforgeError, match="value_ranges"):
        save_grid(tmp_path / "x.png", images, value_ranges=[(0, 1)])


def test_save_uncertainty(tmp_path):
    image = np.linspace(0, 1, 12 * 16).reshape(12, 16)
    mask = np.zeros((12, 16), int)
    mask[:, 8:] = 2
    uncertainty = np.zeros((12, 16))
    uncertainty[0, 0] = 1.0
    path = save_uncertainty(tmp_path / "u.png", image, mask, uncertainty, COLORS)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (12, 3 * 16 + 2 * 2, 3)
    overlay_right = picture[5, 18 + 12]
    assert overlay_right[2] > overlay_right[0]  # pore blue shows on the overlay
    hot, cold = picture[0, 36], picture[5, 40]
    assert int(hot.sum()) > int(cold.sum())  # high uncertainty is brighter in magma
    with pytest.raises(PairforgeError, match="one size"):
        save_uncertainty(tmp_path / "u.png", image, mask[:5], uncertainty)
