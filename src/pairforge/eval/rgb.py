"""Image channels and masks as RGB in [0, 1] for Inception: a colormap per channel, class colors."""

from __future__ import annotations

import numpy as np

from pairforge.errors import PairforgeError
from pairforge.viz import colormap_colors

CMAP_CHOICES = ("viridis", "gray")


def channel_to_rgb(channel: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Map single-channel images (N, H, W) in [0, 1] to RGB float32 (N, 3, H, W) in [0, 1].

    cmap "gray" replicates the channel; any other name is a matplotlib colormap (e.g. "viridis"),
    sampled at 256 levels.
    """
    channel = np.clip(np.asarray(channel, dtype=np.float32), 0.0, 1.0)
    if cmap == "gray":
        return np.repeat(channel[:, None], 3, axis=1)
    try:
        lut = colormap_colors(cmap).astype(np.float32)
    except PairforgeError as err:
        raise PairforgeError(
            f"--channels-cmap {cmap!r}: unknown colormap; use one of {', '.join(CMAP_CHOICES)}"
        ) from err
    levels = np.round(channel * 255.0).astype(np.int64)
    return np.ascontiguousarray(lut[levels].transpose(0, 3, 1, 2))


def mask_to_rgb(masks: np.ndarray, class_colors: np.ndarray) -> np.ndarray:
    """Class-index masks (N, H, W) -> RGB float32 (N, 3, H, W) in [0, 1]; ignore (255) is black."""
    colors = np.asarray(class_colors, dtype=np.float32).reshape(-1, 3) / 255.0
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colors)] = colors
    masks = np.asarray(masks)
    if masks.size and (masks.min() < 0 or (masks.max() >= len(colors) and masks.max() != 255)):
        raise PairforgeError(
            f"mask holds class indices {int(masks.min())}..{int(masks.max())} but only "
            f"{len(colors)} class colors are given"
        )
    return np.ascontiguousarray(lut[masks.astype(np.int64)].transpose(0, 3, 1, 2))
