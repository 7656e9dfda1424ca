"""Pictures of multi-channel images and masks: colorized channels, mask overlays, sample grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError

# A fixed, distinguishable palette for classes that declare no color (pairforge.data.spec uses it
# for dataset.yaml classes without a color; save_grid when no class colors are given).
DEFAULT_PALETTE = [
    (70, 70, 70), (230, 180, 40), (40, 90, 200), (200, 60, 60), (60, 170, 90), (150, 80, 190),
    (240, 130, 40), (40, 190, 200), (230, 90, 170), (140, 140, 40), (120, 60, 30), (0, 0, 140),
]  # fmt: skip
_SEPARATOR_PX = 2
# save_grid's automatic upscale makes each tile's longer side at least this many pixels.
MIN_TILE_PX = 96


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def colormap_colors(cmap: str) -> np.ndarray:
    """(256, 3) float64 RGB in [0, 1]: a matplotlib colormap sampled at 256 even levels."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise PairforgeError(
            f"unknown colormap {cmap!r}; use 'viridis', 'gray' or any matplotlib name"
        ) from None
    return colormap(np.linspace(0, 1, 256))[:, :3]


def _lookup_table(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colors of a matplotlib colormap."""
    if cmap == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp, ramp, ramp], axis=1)
    return (colormap_colors(cmap) * 255 + 0.5).astype(np.uint8)


def colorize_channel(x, vmin: float, vmax: float, cmap: str = "viridis") -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8; vmin maps to the first color, vmax to the last, clipped."""
    x = _to_numpy(x).astype(np.float32)
    span = float(vmax) - float(vmin)
    scaled = (x - float(vmin)) / (span if span > 0 else 1.0)
    index = np.clip(np.nan_to_num(scaled) * 255 + 0.5, 0, 255).astype(np.uint8)
    return _lookup_table(cmap)[index]


def colorize_mask(mask, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8; indices without a color (e.g. 255 ignore) are black."""
    mask = _to_numpy(mask).astype(np.int64)
    palette = np.asarray(colors if colors is not None else DEFAULT_PALETTE, dtype=np.uint8)
    table = np.zeros((max(int(mask.max(initial=0)) + 1, len(palette)), 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[np.clip(mask, 0, None)]


def overlay_mask(rgb, mask, colors=None, alpha: float = 0.45) -> np.ndarray:
    """Blend class colors over an (H, W, 3) uint8 picture: (1 - alpha) rgb + alpha color."""
    rgb = _to_numpy(rgb).astype(np.float32)
    colored = colorize_mask(mask, colors).astype(np.float32)
    return np.clip((1 - alpha) * rgb + alpha * colored + 0.5, 0, 255).astype(np.uint8)


def _value_ranges(images: np.ndarray, value_ranges) -> list[tuple[float, float]]:
    if value_ranges is not None:
        if len(value_ranges) != images.shape[1]:
            raise PairforgeError(
                f"value_ranges has {len(value_ranges)} entries for {images.shape[1]} channels; "
                "give one (low, high) per channel or None"
            )
        return [(float(lo), float(hi)) for lo, hi in value_ranges]
    ranges = []
    for channel in range(images.shape[1]):
        lo, hi = np.nanpercentile(images[:, channel], [1, 99])
        ranges.append((float(lo), float(hi)))
    return ranges


def _save_rgb(path: Path, rgb: np.ndarray, title: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if title is None:
        from PIL import Image

        Image.fromarray(rgb).save(path)
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    height, width = rgb.shape[:2]
    fig = plt.figure(figsize=(width / dpi, (height + 30) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, height / (height + 30)))
    ax.imshow(rgb, interpolation="nearest")
    ax.axis("off")
    fig.text(0.5, 1 - 15 / (height + 30), title, ha="center", va="center", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def auto_scale(height: int, width: int, min_tile_px: int = MIN_TILE_PX) -> int:
    """Smallest integer factor that makes the longer side of an (height, width) tile reach
    min_tile_px pixels; 1 for tiles already that large."""
    longest = max(int(height), int(width), 1)
    return max(1, -(-int(min_tile_px) // longest))


def _upscale(tile: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of an (H, W, 3) tile by an integer factor (each pixel a block)."""
    if scale == 1:
        return tile
    return np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)


def save_grid(
    path,
    images,
    masks=None,
    channel_names: Sequence[str] | None = None,
    class_colors=None,
    value_ranges=None,
    cmap: str = "viridis",
    max_items: int = 16,
    title: str | None = None,
    scale: int | None = None,
) -> Path:
    """Write a grid picture: one row per sample, one column per channel, then mask and overlay.

    Args:
        images: (N, C, H, W) numpy or torch, any units (e.g. physical or model range ~[-1, 1]);
            None draws the masks alone (one mask column; `masks` is then required and
            channel_names / value_ranges are not used).
        masks: (N, H, W) class indices, or None (no mask columns).
        channel_names: used to check the channel count (the picture carries no labels).
        class_colors: RGB per class index; None = a fixed palette.
        value_ranges: per channel (low, high) for the colormap; None = 1st..99th percentile of
            that channel over the shown samples.
        cmap: colormap of every channel ("viridis", "gray", ...).
        max_items: at most this many samples (the first ones) are drawn.
        title: None writes the bare pixel grid with PIL; a title is drawn above it with
            matplotlib.
        scale: integer nearest-neighbour upscale of every tile (each pixel becomes a
            scale x scale block); None = `auto_scale`, the smallest factor that makes a tile's
            longer side at least MIN_TILE_PX (96) pixels; 1 = exact pixels. Without a title
            the file is exactly rows x columns of (H * scale, W * scale) tiles plus 2 px
            separators.

    Returns the path. Overlay column: the mask over the first channel in gray.
    """
    images, masks = _grid_inputs(images, masks, channel_names, max_items)
    count, height, width = masks.shape if images is None else (len(images), *images.shape[2:])
    ranges = None if images is None else _value_ranges(images, value_ranges)
    if scale is None:
        scale = auto_scale(height, width)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise PairforgeError(f"save_grid: scale={scale!r}; use an integer >= 1 or None (automatic)")
    if images is None:
        columns = 1
    else:
        columns = images.shape[1] + (2 if masks is not None else 0)
    tile_h, tile_w = height * scale, width * scale
    step_y, step_x = tile_h + _SEPARATOR_PX, tile_w + _SEPARATOR_PX
    canvas = np.full(
        (count * step_y - _SEPARATOR_PX, columns * step_x - _SEPARATOR_PX, 3), 255, np.uint8
    )
    for row in range(count):
        tiles = _row_tiles(images, masks, row, ranges, class_colors, cmap)
        for column, tile in enumerate(tiles):
            y, x = row * step_y, column * step_x
            canvas[y : y + tile_h, x : x + tile_w] = _upscale(tile, scale)
    return _save_rgb(Path(path), canvas, title)


def _grid_inputs(images, masks, channel_names, max_items: int):
    """(images float32 (n, C, H, W) or None, masks (n, H, W) or None): the first `max_items`
    samples as numpy, shapes checked (PairforgeError naming the mismatch)."""
    if images is None:
        if masks is None:
            raise PairforgeError("save_grid: give images, masks or both; both are None")
        masks = _to_numpy(masks)
        if masks.ndim != 3:
            raise PairforgeError(f"save_grid: masks must be (N, H, W), got shape {masks.shape}")
        return None, masks[:max_items]
    images = _to_numpy(images)
    if images.ndim != 4:
        raise PairforgeError(f"save_grid: images must be (N, C, H, W), got shape {images.shape}")
    images = images[:max_items].astype(np.float32)
    count, num_channels, height, width = images.shape
    if channel_names is not None and len(channel_names) != num_channels:
        raise PairforgeError(
            f"save_grid: {len(channel_names)} channel names {list(channel_names)} "
            f"for {num_channels} channels"
        )
    if masks is not None:
        masks = _to_numpy(masks)[:max_items]
        if masks.shape != (count, height, width):
            raise PairforgeError(
                f"save_grid: masks shape {masks.shape} does not match images "
                f"{(count, height, width)}"
            )
    return images, masks


def _row_tiles(images, masks, row: int, ranges, class_colors, cmap: str) -> list[np.ndarray]:
    """The (H, W, 3) uint8 tiles of one grid row: each channel, then mask and overlay (or the
    mask alone without images)."""
    if images is None:
        return [colorize_mask(masks[row], class_colors)]
    tiles = [
        colorize_channel(images[row, c], *ranges[c], cmap=cmap) for c in range(images.shape[1])
    ]
    if masks is not None:
        tiles.append(colorize_mask(masks[row], class_colors))
        base = colorize_channel(images[row, 0], *ranges[0], cmap="gray")
        tiles.append(overlay_mask(base, masks[row], class_colors))
    return tiles


def save_uncertainty(
    path, image_channel, mask, uncertainty, colors=None, title: str | None = None
) -> Path:
    """Write image | predicted mask overlay | uncertainty (magma, 0..max) side by side.

    image_channel: (H, W) one channel (gray, 1..99th percentile); mask: (H, W) class indices;
    uncertainty: (H, W) >= 0 (e.g. ensemble disagreement). Returns the path.
    """
    image_channel = _to_numpy(image_channel).astype(np.float32)
    mask = _to_numpy(mask)
    uncertainty = _to_numpy(uncertainty).astype(np.float32)
    if not image_channel.shape == mask.shape == uncertainty.shape or image_channel.ndim != 2:
        raise PairforgeError(
            "save_uncertainty: image_channel, mask and uncertainty must be (H, W) of one size, "
            f"got {image_channel.shape}, {mask.shape}, {uncertainty.shape}"
        )
    lo, hi = np.nanpercentile(image_channel, [1, 99])
    gray = colorize_channel(image_channel, lo, hi, cmap="gray")
    top = float(np.nanmax(uncertainty)) if uncertainty.size else 0.0
    tiles = [
        gray,
        overlay_mask(gray, mask, colors),
        colorize_channel(uncertainty, 0.0, top, "magma"),
    ]
    height, width = gray.shape[:2]
    canvas = np.full((height, 3 * width + 2 * _SEPARATOR_PX, 3), 255, np.uint8)
    for column, tile in enumerate(tiles):
        x = column * (width + _SEPARATOR_PX)
        canvas[:, x : x + width] = tile
    return _save_rgb(Path(path), canvas, title)
