"""Shared helpers for the training tests: a tiny labeled dataset on disk and a tiny config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pairforge.config import load_config


def write_tiny_dataset(root: Path, num_samples: int = 3, size: int = 40, seed: int = 0) -> Path:
    """Two-channel 40 px images (intensity a.u., depth um) with 3-class masks, all labeled."""
    from pairforge.data.dataset import DatasetWriter
    from pairforge.data.spec import DatasetSpec

    spec = DatasetSpec(
        name="tiny",
        channels=[{"name": "intensity", "unit": "a.u."}, {"name": "depth", "unit": "um"}],
        classes=[
            {"id": 0, "name": "binder"},
            {"id": 1, "name": "grain"},
            {"id": 2, "name": "pore"},
        ],
    )
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with DatasetWriter(root, spec) as writer:
        for index in range(num_samples):
            cy, cx = rng.integers(8, size - 8, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
            mask = np.where(disk, 1, 0)
            mask[rng.random((size, size)) < 0.05] = 2
            intensity = 0.3 + 0.6 * disk + 0.05 * rng.standard_normal((size, size))
            depth = 5.0 * disk - 3.0 * (mask == 2) + 0.2 * rng.standard_normal((size, size))
            image = np.stack([intensity, depth]).astype(np.float32)
            writer.add(f"s{index:02d}", image, mask, split="train")
    return root


def tiny_config(data_path: Path, *overrides: str):
    return load_config("tiny", [f"data.path={data_path}", *overrides])
