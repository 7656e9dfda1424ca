"""The built-in data: procedural grinding-tool measurements (see `grain_surface`) as presets,
their measured statistics and the dataset writer.

Real grain measurements are not public; `pairforge.data.grain_surface` imitates them (intensity
+ depth, binder/grain/pore masks), deterministically by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pairforge.data.grain_params import GrainParams, parse_grain_params
from pairforge.data.grain_surface import (
    BINDER,
    GRAIN,
    PORE,
    generate_measurement,
    generate_measurement_with_info,
    seed_sequence,
)
from pairforge.errors import PairforgeError

# The generator's names are part of this module's API (tests, bench/ and data/cli use them).
__all__ = [
    "BINDER",
    "CHANNELS",
    "CLASSES",
    "GRAIN",
    "PORE",
    "PRESETS",
    "GrainParams",
    "GrainPreset",
    "generate_measurement",
    "generate_measurement_with_info",
    "grains_spec",
    "measure_statistics",
    "parse_grain_params",
    "write_grains_dataset",
]

CHANNELS: tuple[tuple[str, str], ...] = (("intensity", "a.u."), ("depth", "um"))
CLASSES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (BINDER, "binder", (70, 70, 70)),
    (GRAIN, "grain", (230, 180, 40)),
    (PORE, "pore", (40, 90, 200)),
)


@dataclass(frozen=True)
class GrainPreset:
    """Layout of a built-in dataset: measurement size and measurements per split."""

    height: int
    width: int
    splits: tuple[tuple[str, int], ...]

    @property
    def num_measurements(self) -> int:
        return sum(count for _, count in self.splits)


PRESETS: dict[str, GrainPreset] = {
    # Small enough for the whole demo pipeline on 2 CPU cores in minutes.
    "demo": GrainPreset(512, 2048, (("train", 8), ("val", 1), ("test", 2))),
    # Smoke tests (`pairforge demo --quick`): every split present, generated in a second.
    "tiny": GrainPreset(128, 256, (("train", 4), ("val", 1), ("test", 1))),
    # The layout of the real grinding-tool study: 8 train, 1 val, 1 test measurement.
    "full": GrainPreset(1270, 10960, (("train", 8), ("val", 1), ("test", 1))),
}


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def measure_statistics(
    image: np.ndarray,
    mask: np.ndarray,
    flat_tolerance_um: float = 0.3,
    flat_share_threshold: float = 0.25,
    min_grain_px: int = 20,
) -> dict[str, float]:
    """Measured statistics of one measurement, comparable with GrainParams.

    Args:
        image: (2, H, W) [intensity, depth um] (only depth is used).
        mask: (H, W) class ids (binder 0, grain 1, pore 2).
        flat_tolerance_um: a grain pixel is on the top plateau if its depth is within this of
            the grain's 90th-percentile depth.
        flat_share_threshold: a grain counts as worn if at least this share of its pixels is on
            the plateau (domes put ~5-15% there, wear flats 25-70%).
        min_grain_px: smaller grains are skipped for the worn share (too few pixels to judge).

    Returns dict: grain_area_fraction, pore_fraction, grain_count (8-connected components),
    grain_median_diameter_px (equivalent-circle diameter of grains not touching the border),
    worn_fraction (share of judged grains with a flat top).
    """
    mask = np.asarray(mask)
    depth = np.asarray(image)[1]
    grains = mask == GRAIN
    labels, count = ndimage.label(grains, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    border = np.unique(
        np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    )  # touching the border: clipped, so their size is not their true size
    interior = np.ones(count, dtype=bool)
    interior[border[border > 0] - 1] = False
    diameters = 2 * np.sqrt(areas[interior] / math.pi)
    judged, worn = 0, 0
    for index, window in enumerate(ndimage.find_objects(labels)):
        if window is None or areas[index] < min_grain_px:
            continue
        values = depth[window][labels[window] == index + 1]
        top = np.percentile(values, 90)
        judged += 1
        worn += np.mean(np.abs(values - top) <= flat_tolerance_um) >= flat_share_threshold
    return {
        "grain_area_fraction": float(grains.mean()),
        "pore_fraction": float((mask == PORE).mean()),
        "grain_count": int(count),
        "grain_median_diameter_px": float(np.median(diameters)) if diameters.size else 0.0,
        "worn_fraction": worn / judged if judged else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


def grains_spec(name: str = "grains"):
    """DatasetSpec of the built-in data: channels intensity (a.u.), depth (um); binder/grain/pore."""
    from pairforge.data.spec import ChannelSpec, ClassSpec, DatasetSpec

    return DatasetSpec(
        name=name,
        channels=[ChannelSpec(name=n, unit=u) for n, u in CHANNELS],
        classes=[ClassSpec(id=i, name=n, color=c) for i, n, c in CLASSES],
        mask_encoding="ids",
    )


def write_grains_dataset(
    out_dir: str | Path,
    preset: str = "demo",
    seed: int = 0,
    params: GrainParams | dict | None = None,
    progress: bool = True,
) -> Path:
    """Write a preset's measurements in the standard dataset format; returns the folder.

    Measurement i (ids m000, m001, ... in split order train, val, test) is generated with seed
    (seed, i), so any one can be regenerated alone with `generate_measurement`. Resumable: ids
    already in the folder's dataset.yaml are skipped.
    """
    from pairforge.data.writer import DatasetWriter

    if preset not in PRESETS:
        raise PairforgeError(f"unknown grain preset {preset!r}; choose one of {sorted(PRESETS)}")
    layout = PRESETS[preset]
    params = parse_grain_params(params)
    seed_values = seed_sequence(seed)
    jobs = []
    for split, count in layout.splits:
        for _ in range(count):
            jobs.append((f"m{len(jobs):03d}", split))
    out_dir = Path(out_dir)
    with DatasetWriter(out_dir, grains_spec(f"{preset}-grains")) as writer:
        iterator = jobs
        if progress:
            from tqdm import tqdm

            iterator = tqdm(jobs, desc=f"grains {preset}", unit="measurement")
        for index, (sample_id, split) in enumerate(iterator):
            if writer.has(sample_id):
                continue
            image, mask = generate_measurement(
                layout.height, layout.width, params, (*seed_values, index)
            )
            writer.add(sample_id, image, mask.astype(np.int64), split=split)
    return out_dir
