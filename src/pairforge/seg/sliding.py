"""Sliding-window segmentation of images larger than the model window, with overlap blending.

Windows of `window` px (default: the head's model resolution) overlap by `overlap` px; the
ensemble's mean softmax, its disagreement and its mean member entropy are blended across
windows (`pairforge.data.views.stitch`, Hann weights by default so window borders count less),
then the label is the argmax of the blended probabilities (mean-softmax combining), the
entropy is that of the blended mean softmax and the Jensen-Shannon disagreement is that
entropy minus the blended member entropy (a weighted mixture of all members of all windows
covering the pixel, so it stays >= 0). Where the image fits in one window the result equals
whole-image segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.data.views import TileStitcher, tile_coords
from pairforge.errors import PairforgeError
from pairforge.seg.ensemble import UncertaintyMaps, entropy_of


@dataclass
class SlidingResult(UncertaintyMaps):
    """mask (H, W) long; probs (K, H, W) blended mean softmax; entropy (H, W) nats;
    disagreement (H, W) in [0, 1]; member_entropy (H, W) blended mean member entropy (nats).
    `.js` (entropy - member_entropy, >= 0) and `.uncertainty(kind)` as for PixelPrediction."""

    mask: torch.Tensor
    probs: torch.Tensor
    entropy: torch.Tensor
    disagreement: torch.Tensor
    member_entropy: torch.Tensor


def _result(probs: torch.Tensor, maps: torch.Tensor) -> SlidingResult:
    """From blended probs (K, H, W) and maps (2, H, W) = (disagreement, member entropy)."""
    return SlidingResult(probs.argmax(dim=0), probs, entropy_of(probs, dim=0), maps[0], maps[1])


def segment_sliding(
    head,
    image: torch.Tensor,
    window: int | None = None,
    overlap: int | None = None,
    blend: str = "hann",
    batch_size: int = 8,
) -> SlidingResult:
    """Segment one normalized image (C, H, W) at model scale with overlapping windows.

    head: a SegmentationHead (anything with `.segment(images, keep_probs=True)` and
    `.num_classes`). window: side in px (default head.info.resolution, else 64);
    overlap: px shared by neighbours (default window // 2). Images smaller than the window
    are padded by reflection and cropped back.
    """
    image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim != 3:
        raise PairforgeError(f"segment_sliding takes one (C, H, W) image; got {tuple(image.shape)}")
    window = int(window or head.info.resolution or 64)
    overlap = window // 2 if overlap is None else int(overlap)
    _, height, width = image.shape
    padded = _pad_to_window(image, window)
    padded_h, padded_w = padded.shape[-2:]
    coords = tile_coords(padded_h, padded_w, window, overlap)
    # Blended batch by batch (the tiles are not kept): the same sums, in the same order, as
    # `stitch` of all tiles at once.
    stitcher = TileStitcher(head.num_classes + 2, (padded_h, padded_w), (window, window), blend)
    for first in range(0, len(coords), batch_size):
        chunk = coords[first : first + batch_size]
        batch = torch.stack([padded[:, y : y + window, x : x + window] for y, x in chunk])
        result = head.segment(batch, keep_probs=True, batch_size=batch_size)
        maps = torch.stack([result.disagreement, result.member_entropy], dim=1)
        stitcher.add(torch.cat([result.mean_probs, maps], dim=1), chunk)
    blended = stitcher.result(torch.float32)[:, :height, :width]
    return _result(blended[:-2], blended[-2:])


def _pad_to_window(image: torch.Tensor, window: int) -> torch.Tensor:
    _, height, width = image.shape
    pad_h, pad_w = max(0, window - height), max(0, window - width)
    if pad_h == 0 and pad_w == 0:
        return image
    # Reflection needs pad < size; repeat it for very small images.
    while pad_h or pad_w:
        step_h, step_w = min(pad_h, image.shape[1] - 1), min(pad_w, image.shape[2] - 1)
        if step_h == 0 and step_w == 0:
            return F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
        image = F.pad(image[None], (0, step_w, 0, step_h), mode="reflect")[0]
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return image


def _at_model_scale(head, image: np.ndarray, overlap, blend: str, batch_size: int):
    """SlidingResult of a physical-unit measurement at the head's training scale: normalized
    with the head's normalizer, area-downsampled by crop_size / resolution, windows slid."""
    from pairforge.data.views import downsample_image

    normalizer = head.normalizer
    if normalizer is None:
        raise PairforgeError(
            "this head stores no normalizer; pass normalized images to segment_sliding instead"
        )
    normalized = torch.from_numpy(np.ascontiguousarray(normalizer.encode(image), dtype=np.float32))
    factor = head.scale
    small = downsample_image(normalized, factor) if factor != 1 else normalized
    del normalized  # the full-size copy is not needed past here
    return segment_sliding(head, small, overlap=overlap, blend=blend, batch_size=batch_size)


def segment_measurement(
    head,
    image: np.ndarray,
    overlap: int | None = None,
    blend: str = "hann",
    batch_size: int = 8,
    full_resolution: bool = True,
) -> SlidingResult:
    """Segment a measurement in physical units (C, H, W) at the scale the model was trained at.

    Normalizes with the head's normalizer, area-downsamples by crop_size / resolution (the
    training scale), slides windows, and (full_resolution) upsamples the blended probabilities
    and uncertainty bilinearly back to (H, W) before taking the argmax.
    """
    result = _at_model_scale(head, image, overlap, blend, batch_size)
    factor = head.scale
    if not full_resolution or factor == 1:
        return result
    size = tuple(image.shape[-2:])
    maps = torch.cat([result.probs, result.disagreement[None], result.member_entropy[None]])
    # Bilinear weights are a mixture too: JS recomputed from the upsampled maps stays >= 0.
    maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return _result(maps[:-2], maps[-2:])


def upsample_rows(maps: torch.Tensor, size: tuple[int, int], start: int, stop: int):
    """Rows start..stop-1 of `F.interpolate(maps[None], size, mode="bilinear",
    align_corners=False)[0]` for maps (C, h, w), computed from only the source rows they need.

    Same source indices and weights as torch's kernel (scale h / H in float32, source index
    scale * (y + 0.5) - 0.5 with one rounding, as its fused multiply-add, clamped at 0): columns
    first by torch itself (rows unchanged at scale 1), then rows. Floats differ from the whole
    interpolation by at most an ulp or two (another association of the same weighted sum).
    """
    _, h, _ = maps.shape
    height, width = size
    scale = (torch.tensor(h, dtype=torch.float32) / height).double()
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).float().clamp_min(0)
    y0 = src.long().clamp(max=h - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    low = (src - y0.float()).clamp(0, 1)
    high_rows = int(y1.max()) + 1
    first = int(y0.min())
    cols = F.interpolate(maps[None, :, first:high_rows], size=(high_rows - first, width),
                         mode="bilinear", align_corners=False)[0]  # fmt: skip
    return (1 - low)[:, None] * cols[:, y0 - first] + low[:, None] * cols[:, y1 - first]


def segment_measurement_maps(
    head,
    image: np.ndarray,
    uncertainty: str = "js",
    overlap: int | None = None,
    blend: str = "hann",
    batch_size: int = 8,
    band_rows: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) uint8 (int32 over 256 classes), uncertainty of `uncertainty` (H, W)
    float32) of a measurement: `segment_measurement(...)`'s full-resolution mask and
    `.uncertainty(kind)`, computed in bands of `band_rows` output rows, so only the model-scale
    maps and one band of full-resolution maps exist at a time (not K + 2 full-size float maps
    and their temporaries). Equal to segment_measurement up to float rounding of the bilinear
    weights (an ulp): the same labels except at exact ties.
    """
    result = _at_model_scale(head, image, overlap, blend, batch_size)
    factor = head.scale
    dtype = np.uint8 if head.num_classes <= 256 else np.int32
    if factor == 1:
        return result.mask.numpy().astype(dtype), result.uncertainty(uncertainty).numpy()
    size = tuple(image.shape[-2:])
    maps = torch.cat([result.probs, result.disagreement[None], result.member_entropy[None]])
    labels = np.empty(size, dtype)
    values = np.empty(size, np.float32)
    for start in range(0, size[0], band_rows):
        stop = min(size[0], start + band_rows)
        band = upsample_rows(maps, size, start, stop)
        part = _result(band[:-2], band[-2:])
        labels[start:stop] = part.mask.numpy()
        values[start:stop] = part.uncertainty(uncertainty).numpy()
    return labels, values
