"""Tiny on-disk datasets shared by the eval tests (and a check that they are what they claim)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from pairforge.data.dataset import DatasetWriter, load_dataset
from pairforge.data.spec import DatasetSpec

CHANNELS = [{"name": "intensity", "unit": "a.u."}, {"name": "depth", "unit": "um"}]
CLASSES = [
    {"id": 0, "name": "binder", "color": [70, 70, 70]},
    {"id": 1, "name": "grain", "color": [230, 180, 40]},
]


def make_pair(size: int, rng: np.random.Generator, blob_scale: float = 2.0, shift: float = 0.0):
    """(image float32 (2, size, size), mask int64 (size, size)): grains brighter and higher."""
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), blob_scale)
    mask = (field > np.quantile(field, 0.6)).astype(np.int64)
    intensity = 0.3 + 0.5 * mask + 0.05 * rng.normal(size=mask.shape) + shift
    depth = 10.0 * ndimage.gaussian_filter(mask.astype(float), 1.0) + rng.normal(size=mask.shape)
    return np.stack([intensity, depth]).astype(np.float32), mask


def write_dataset(
    root: Path,
    count: int,
    size: int,
    *,
    seed: int = 0,
    labeled: int | None = None,
    splits: dict[str, int] | None = None,
    shift: float = 0.0,
    normalization: dict | None = None,
) -> Path:
    """Write `count` samples of `size` px; the first `labeled` (default all) get masks.

    splits: {"train": 2, "val": 1, "test": 1} assigns consecutive samples to splits
    (default: all "train").
    """
    rng = np.random.default_rng(seed)
    spec = DatasetSpec.model_validate(
        {
            "name": root.name,
            "channels": CHANNELS,
            "classes": CLASSES,
            "normalization": normalization or {"low": [0.2, -1.0], "high": [1.0, 11.0]},
        }
    )
    labeled = count if labeled is None else labeled
    names = []
    for split, n in (splits or {"train": count}).items():
        names += [split] * n
    with DatasetWriter(root, spec) as writer:
        for index in range(count):
            image, mask = make_pair(size, rng, shift=shift)
            writer.add(
                f"s{index:03d}", image, mask if index < labeled else None, split=names[index]
            )
    return root


def test_write_dataset_round_trips(tmp_path):
    root = write_dataset(tmp_path / "d", 3, 16, labeled=2, splits={"train": 2, "test": 1})
    ds = load_dataset(root)
    assert ds.ids("train") == ["s000", "s001"] and ds.ids("test") == ["s002"]
    assert ds.read_image("s000").shape == (2, 16, 16)
    assert ds.has_mask("s001") and not ds.has_mask("s002")
    assert set(np.unique(ds.read_mask("s000"))) <= {0, 1}
