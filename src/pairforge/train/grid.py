"""Sample grids for training progress: one row per image channel, masks overlaid in class colors."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) in [-1, 1] -> (H, W, 3) uint8 viridis."""
    from matplotlib import colormaps

    unit = np.clip((values + 1.0) / 2.0, 0.0, 1.0)
    return (colormaps["viridis"](unit)[..., :3] * 255).astype(np.uint8)


def render_grid(images, masks, class_colors, tile_px: int = 96) -> np.ndarray:
    """RGB grid (rows * tile, cols * tile, 3) uint8.

    images: (N, C, H, W) float in ~[-1, 1] or None; masks: (N, H, W) class indices or None;
    class_colors: RGB per class index. Columns are samples; rows are the C channels (viridis),
    then, if masks are given, the masks in class colors over the first channel in gray.
    """
    from PIL import Image

    count = len(images) if images is not None else len(masks)
    palette = np.array(list(class_colors) + [(0, 0, 0)] * 256, dtype=np.float32)[:256]
    rows: list[list[np.ndarray]] = []
    if images is not None:
        images = np.asarray(images, dtype=np.float32)
        for channel in range(images.shape[1]):
            rows.append([_colormap(images[n, channel]) for n in range(count)])
    if masks is not None:
        masks = np.clip(np.asarray(masks), 0, 255).astype(np.int64)
        overlay_row = []
        for n in range(count):
            colors = palette[masks[n]]
            if images is not None:
                gray = np.clip((images[n, 0] + 1.0) / 2.0, 0, 1)[..., None] * 255.0
                colors = 0.55 * colors + 0.45 * gray
            overlay_row.append(colors.astype(np.uint8))
        rows.append(overlay_row)

    def tile(rgb: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(rgb).resize((tile_px, tile_px), Image.NEAREST)
        return np.pad(np.asarray(resized), ((1, 1), (1, 1), (0, 0)), constant_values=255)

    return np.concatenate([np.concatenate([tile(t) for t in row], axis=1) for row in rows], axis=0)


def save_sample_grid(path: Path, images, masks, class_colors, tile_px: int = 96) -> Path:
    """Write `render_grid(...)` as a PNG at `path` (parent folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_grid(images, masks, class_colors, tile_px)).save(path)
    return path
