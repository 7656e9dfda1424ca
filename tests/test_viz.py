"""Tests of the picture helpers: colors, overlays, grid and uncertainty files."""

import numpy as np
import pytest
import torch
from PIL import Image

from pairforge.errors import PairforgeError
from pairforge.viz import (
    auto_scale,
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
        scale=1,
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
    path = save_grid(tmp_path / "a.png", images, None, max_items=4, scale=1)
    assert Image.open(path).size == (6, 4 * 6 + 3 * 2)  # PIL size is (width, height)
    titled = save_grid(tmp_path / "b.png", images, None, max_items=2, title="samples", scale=1)
    assert Image.open(titled).size[1] > 2 * 6


def test_save_grid_rejects_mismatches(tmp_path):
    images = np.zeros((2, 2, 4, 4))
    with pytest.raises(PairforgeError, match="channel names"):
        save_grid(tmp_path / "x.png", images, channel_names=["a"])
    with pytest.raises(PairforgeError, match="masks shape"):
        save_grid(tmp_path / "x.png", images, np.zeros((2, 5, 4)))
    with pytest.raises(PairforgeError, match="value_ranges"):
        save_grid(tmp_path / "x.png", images, value_ranges=[(0, 1)])


def test_save_grid_upscales_tiles_by_whole_pixels(tmp_path):
    images = np.zeros((2, 1, 3, 4), np.float32)
    images[:, 0, 0, 0] = 1.0  # one bright pixel in the top-left corner of each tile
    masks = np.zeros((2, 3, 4), np.int64)
    masks[:, 2, 3] = 2  # one pore pixel in the bottom-right corner
    path = save_grid(
        tmp_path / "big.png", images, masks, class_colors=COLORS,
        value_ranges=[(0, 1)], cmap="gray", scale=5,
    )  # fmt: skip
    picture = np.asarray(Image.open(path))
    # 2 rows of 3 * 5 px, 3 columns (channel, mask, overlay) of 4 * 5 px, 2 px separators.
    assert picture.shape == (2 * 15 + 2, 3 * 20 + 2 * 2, 3)
    # The bright source pixel becomes a 5 x 5 block; its neighbours stay dark.
    assert (picture[:5, :5] == 255).all() and picture[5, 0].tolist() == [0, 0, 0]
    assert picture[0, 5].tolist() == [0, 0, 0]
    mask_tile = picture[:15, 22:42]
    assert (mask_tile[10:, 15:] == [40, 90, 200]).all()  # pore block, 5 x 5
    assert mask_tile[9, 15].tolist() == [70, 70, 70] and mask_tile[10, 14].tolist() == [70, 70, 70]
    second_row = picture[17:32, :20]
    assert (second_row[:5, :5] == 255).all()


def test_save_grid_automatic_scale_reaches_96_px(tmp_path):
    assert auto_scale(8, 8) == 12 and auto_scale(10, 7) == 10 and auto_scale(32, 20) == 3
    assert auto_scale(96, 40) == 1 and auto_scale(300, 300) == 1 and auto_scale(50, 50) == 2
    images = np.random.default_rng(1).normal(size=(2, 2, 10, 7)).astype(np.float32)
    path = save_grid(tmp_path / "auto.png", images)  # scale=None: automatic
    # 10 px tiles x 10 = 100 px tall, 7 px x 10 = 70 px wide.
    assert Image.open(path).size == (2 * 70 + 2, 2 * 100 + 2)
    big = np.zeros((1, 1, 120, 100), np.float32)
    assert Image.open(save_grid(tmp_path / "big.png", big)).size == (100, 120)
    with pytest.raises(PairforgeError, match="scale"):
        save_grid(tmp_path / "x.png", images, scale=0)
    with pytest.raises(PairforgeError, match="scale"):
        save_grid(tmp_path / "x.png", images, scale=1.5)


def test_save_grid_masks_only(tmp_path):
    masks = np.zeros((5, 6, 8), np.int64)
    masks[:, :, 4:] = 1
    masks[1] = 2
    masks[2, 0, 0] = 255  # ignore index: black
    path = save_grid(tmp_path / "m.png", None, masks, class_colors=COLORS, max_items=3, scale=2)
    picture = np.asarray(Image.open(path))
    # One mask column; the first 3 of 5 samples; tiles of 12 x 16 px.
    assert picture.shape == (3 * 12 + 2 * 2, 16, 3)
    assert picture[0, 0].tolist() == [70, 70, 70] and picture[0, 8].tolist() == [230, 180, 40]
    assert picture[14, 0].tolist() == [40, 90, 200]  # second row: all class 2
    assert picture[28, 0].tolist() == [0, 0, 0] and picture[28, 2].tolist() == [70, 70, 70]
    assert picture[12, 0].tolist() == [255, 255, 255]  # separator between rows
    automatic = save_grid(tmp_path / "a.png", None, torch.as_tensor(masks[:1]))
    assert Image.open(automatic).size == (96, 72)  # scale 12 from the longer side 8
    with pytest.raises(PairforgeError, match="both are None"):
        save_grid(tmp_path / "x.png", None, None)
    with pytest.raises(PairforgeError, match="masks must be"):
        save_grid(tmp_path / "x.png", None, np.zeros((6, 8)))


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
