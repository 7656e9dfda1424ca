"""Cached real-set statistics: REAL/.pairforge-cache/inception-<target>-<digest>.npz."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pairforge.eval.distances import FeatureStats, feature_stats
from pairforge.io import atomic_write


def inputs_digest(rgb: np.ndarray, settings: dict) -> str:
    """sha256 of the 8-bit RGB inputs and the settings that turn them into features."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(str(rgb.shape).encode())
    digest.update(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8).tobytes())
    return digest.hexdigest()


def load_or_compute_stats(
    rgb: np.ndarray,
    compute_features,
    *,
    settings: dict,
    cache_path: Path | None,
) -> tuple[FeatureStats, bool]:
    """Statistics of `rgb` inputs, read from the .npz cache when its digest matches.

    The cache file holds mu, sigma, n, features and the digest of (inputs, settings); a file
    whose digest differs (other images, colormap or weights) is recomputed and overwritten.
    Returns (stats, came_from_cache).
    """
    digest = inputs_digest(rgb, settings)
    if cache_path is not None and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as cached:
            if str(cached["digest"]) == digest:
                return (
                    FeatureStats(
                        mu=cached["mu"],
                        sigma=cached["sigma"],
                        n=int(cached["n"]),
                        features=cached["features"],
                    ),
                    True,
                )
    stats = feature_stats(compute_features(rgb))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "mu": stats.mu,
            "sigma": stats.sigma,
            "n": stats.n,
            "features": stats.features,
            "digest": digest,
            "settings": json.dumps(settings, sort_keys=True),
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(cache_path, write)
    return stats, False
