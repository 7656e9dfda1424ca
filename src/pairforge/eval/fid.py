"""FID and KID per image channel and for masks, with the standard FID InceptionV3 weights offline.

The parts live beside it: `eval.inception` (weights, TF1-legacy resize, pool features),
`eval.distances` (statistics, FID, KID), `eval.rgb` (channels and masks to RGB),
`eval.stats_cache` (cached real statistics) and `eval.domain` (domain features).

Each single image channel is mapped to RGB (viridis colormap, as in the grain study, or gray
replication) after normalizing it to [0, 1] with the real dataset's normalizer range; masks are
drawn in their class colors. A domain feature option (pooled mid-block activations of a trained
pairforge model at a fixed timestep) is reported next to Inception, never instead of it; its
network must be a neutral image-only DDPM (task image), not one of the compared generators nor
any model trained on masks, which would score samples like its own as closer.

The per-target FIDs are distances between different input distributions (each channel in a
colormap, masks in class colors), so their mean is no distance of anything: it is reported as a
row labeled `MEAN_ROW_LABEL` (kind "mean_of_targets"), a plain mean, never a metric.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pairforge.core.tasks import get_task
from pairforge.errors import PairforgeError
from pairforge.eval.distances import (
    feature_stats,
    frechet_distance_of_stats,
    kernel_inception_distance,
)
from pairforge.eval.domain import DomainFeatureExtractor, domain_model_inputs
from pairforge.eval.inception import (
    INCEPTION_FEATURES,
    INCEPTION_SIZE,
    InceptionFeatureExtractor,
    extract_features,
)
from pairforge.eval.rgb import channel_to_rgb, mask_to_rgb
from pairforge.eval.sets import ALL_SPLITS
from pairforge.eval.stats_cache import inputs_digest, load_or_compute_stats

# FID estimated from fewer samples than feature dimensions has a rank-deficient covariance and a
# strong upward bias; results below this count carry a warning.
FID_MIN_RELIABLE_SAMPLES = INCEPTION_FEATURES
# Label (target) and kind of the row that averages the per-target rows: a summary, not a metric.
MEAN_ROW_LABEL = "mean of per-target FIDs, not a metric"
MEAN_ROW_KIND = "mean_of_targets"


def _row(target, kind, features, real_stats, fake_stats, kid: dict, cached):
    """One table row: FID of the statistics, KID of their features (`kid`: the keyword
    arguments of `kernel_inception_distance`: num_subsets, subset_size, seed)."""
    kid_mean, kid_std, kid_size = kernel_inception_distance(
        real_stats.features, fake_stats.features, **kid
    )
    return {
        "target": target,
        "kind": kind,
        "features": features,
        "fid": frechet_distance_of_stats(real_stats, fake_stats),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "n_real": real_stats.n,
        "n_fake": fake_stats.n,
        "real_stats_cached": cached,
    }


def evaluate_fid(
    real,
    fake,
    *,
    cmap: str = "viridis",
    weights_path: str | Path | None = None,
    extractor: torch.nn.Module | None = None,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    domain: tuple[DomainFeatureExtractor, object] | None = None,
    progress: bool = False,
) -> dict:
    """FID and KID of a synthetic EvalSet against a real one, per channel and for masks.

    Args:
        real, fake: `pairforge.eval.sets.EvalSet`s of the same channels (and classes). Both
            are mapped to [0, 1] with their own normalizer: load the fake set with the real
            normalizer (load_eval_set(..., normalizer=real.normalizer)).
        cmap: "viridis" or "gray" (any matplotlib colormap name works).
        weights_path: TorchScript Inception weights (None: the installed package's file).
        extractor: a ready InceptionFeatureExtractor (saves reloading it); overrides weights_path.
        cache_dir: folder for cached real statistics (`inception-<target>-<digest>.npz`); None:
            no cache.
        domain: (DomainFeatureExtractor, run) from `DomainFeatureExtractor.from_run`: adds a
            row with domain features of the whole multi-channel sample (use an image-only run).

    Returns:
        JSON-ready dict: {"metric": "fid", "real": {"source", "split", "n_images", "n_masks"},
        "fake": {...}, "settings": {..., "real_split"}, "rows": [{"target", "kind" (channel |
        mask | mean_of_targets | domain), "features", "fid", "kid_mean", "kid_std",
        "kid_subset_size", "n_real", "n_fake", "real_stats_cached"}], "warnings": [...],
        "seconds": float}. "split" is the real reference's splits ("train", "train,val" or
        "all"). The mean_of_targets row (target `MEAN_ROW_LABEL`) is the plain mean of the
        channel and mask rows' FID and KID: distances of different inputs, so not a metric.
    """
    start = time.perf_counter()
    if real.channel_names != fake.channel_names:
        raise PairforgeError(
            f"channels differ: real {real.source} has {real.channel_names}, synthetic "
            f"{fake.source} has {fake.channel_names}; compare datasets of the same channels"
        )
    extractor = extractor or InceptionFeatureExtractor(weights_path)
    settings = _inception_settings(extractor, cmap)
    kid = {"num_subsets": kid_subsets, "subset_size": kid_subset_size, "seed": seed}
    targets, warnings = _inception_targets(real, fake, cmap)
    if real.split_label == ALL_SPLITS:
        warnings.append(
            f"real reference: every sample of {real.source}, test split included if it has one; "
            "use the train split (--real-split train) so nothing is tuned on test data"
        )
    features_of = partial(extract_features, extractor, batch_size=batch_size, progress=progress)
    rows = _inception_rows(targets, settings, cache_dir, kid, features_of)
    if rows:
        rows.append(_mean_row(rows))
    domain_settings = None
    if domain is not None:
        row, domain_settings = _domain_row(domain, real, fake, batch_size, kid)
        rows.append(row)
    warnings.extend(_few_samples_warnings(rows))
    return {
        "metric": "fid",
        **_sets_record(real, fake),
        "settings": {
            **settings,
            "real_split": real.split_label,
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_subset_size,
            "seed": seed,
            "domain": domain_settings,
        },
        "rows": rows,
        "warnings": warnings,
        "seconds": time.perf_counter() - start,
    }


def _sets_record(real, fake) -> dict:
    """The result's "real" and "fake" entries: source, (real) split, image and mask counts."""
    return {
        "real": {
            "source": real.source,
            "split": real.split_label,
            "n_images": real.num_images,
            "n_masks": real.num_masks,
        },
        "fake": {"source": fake.source, "n_images": fake.num_images, "n_masks": fake.num_masks},
    }


def _inception_settings(extractor, cmap: str) -> dict:
    """What the Inception rows depend on (also the key of the cached real statistics)."""
    weights_file = getattr(extractor, "weights_path", None)
    return {
        "cmap": cmap,
        # Name and size identify the weights file well enough for the cache key.
        "weights": Path(weights_file).name if weights_file else type(extractor).__name__,
        "weights_bytes": Path(weights_file).stat().st_size if weights_file else None,
        "quantize": bool(getattr(extractor, "quantize", False)),
        "resize": f"tf-legacy-bilinear {INCEPTION_SIZE}",
    }


def _inception_targets(real, fake, cmap: str) -> tuple[list[tuple], list[str]]:
    """([(name, kind, real rgb, fake rgb)]: each channel in `cmap`, then the masks in the real
    class colors when both sets have masks; warnings: the missing mask target)."""
    targets = []
    real_unit, fake_unit = real.unit_range(), fake.unit_range()
    for index, name in enumerate(real.channel_names):
        targets.append(
            (
                name,
                "channel",
                channel_to_rgb(real_unit[:, index], cmap),
                channel_to_rgb(fake_unit[:, index], cmap),
            )
        )
    warnings = []
    if real.masks is not None and fake.masks is not None:
        targets.append(
            (
                "mask",
                "mask",
                mask_to_rgb(real.masks, real.class_colors),
                mask_to_rgb(fake.masks, real.class_colors),
            )
        )
    else:
        missing = [s.source for s in (real, fake) if s.masks is None]
        warnings.append(f"no mask FID: no labeled samples in {', '.join(missing)}")
    return targets, warnings


def _inception_rows(targets, settings: dict, cache_dir, kid: dict, features_of) -> list[dict]:
    """One Inception row per target; real statistics from the cache when it holds them.

    features_of(rgb (N, 3, H, W), desc=progress description) -> Inception features (N, 2048).
    """
    rows = []
    for name, kind, real_rgb, fake_rgb in targets:
        target_settings = {**settings, "target": name, "kind": kind}
        if kind == "mask":
            target_settings.pop("cmap")  # mask colors do not depend on the channel colormap
        cache_path = None
        if cache_dir is not None:
            digest = inputs_digest(real_rgb, target_settings)[:16]
            cache_path = Path(cache_dir) / f"inception-{name}-{digest}.npz"
        real_stats, cached = load_or_compute_stats(
            real_rgb,
            lambda rgb, n=name: features_of(rgb, desc=f"real {n}"),
            settings=target_settings,
            cache_path=cache_path,
        )
        fake_stats = feature_stats(features_of(fake_rgb, desc=f"synthetic {name}"))
        rows.append(_row(name, kind, "inception", real_stats, fake_stats, kid, cached))
    return rows


def _mean_row(rows: list[dict]) -> dict:
    """The plain mean of the per-target rows (`MEAN_ROW_LABEL`): a summary, not a metric."""
    return {
        "target": MEAN_ROW_LABEL,
        "kind": MEAN_ROW_KIND,
        "features": "inception",
        "fid": float(np.mean([r["fid"] for r in rows])),
        "kid_mean": float(np.mean([r["kid_mean"] for r in rows])),
        "kid_std": None,
        "kid_subset_size": None,
        "n_real": min(r["n_real"] for r in rows),
        "n_fake": min(r["n_fake"] for r in rows),
        "real_stats_cached": None,
    }


def _domain_row(domain, real, fake, batch_size: int, kid: dict) -> tuple[dict, dict]:
    """(row of the domain features of the whole sample, the settings naming their run)."""
    domain_extractor, run = domain
    real_input, real_segmap = domain_model_inputs(real, run)
    fake_input, fake_segmap = domain_model_inputs(fake, run)

    def domain_features(inputs, segmap):
        outputs = []
        for first in range(0, inputs.shape[0], batch_size):
            part = None if segmap is None else segmap[first : first + batch_size]
            outputs.append(domain_extractor(inputs[first : first + batch_size], part).double())
        return torch.cat(outputs).numpy()

    real_stats = feature_stats(domain_features(real_input, real_segmap))
    fake_stats = feature_stats(domain_features(fake_input, fake_segmap))
    label = f"domain:{domain_extractor.block}@t={domain_extractor.timestep}"
    row = _row("sample", "domain", label, real_stats, fake_stats, kid, False)
    settings = {
        "run": str(run.path),
        "task": run.task,
        "neutral": not get_task(run.task).needs_masks,
        "timestep": domain_extractor.timestep,
        "block": domain_extractor.block,
        "seed": domain_extractor.seed,
        "feature_dim": int(real_stats.mu.shape[0]),
    }
    return row, settings


def _few_samples_warnings(rows: list[dict]) -> list[str]:
    """A warning when a channel or mask FID rests on fewer samples than feature dimensions."""
    few = [
        r
        for r in rows
        if r["kind"] in ("channel", "mask")
        and min(r["n_real"], r["n_fake"]) < FID_MIN_RELIABLE_SAMPLES
    ]
    if not few:
        return []
    smallest = min(min(r["n_real"], r["n_fake"]) for r in few)
    return [
        f"FID from {smallest} samples (< {FID_MIN_RELIABLE_SAMPLES}) is biased upward and "
        "only comparable at equal sample counts; KID is unbiased"
    ]


def row_label(row: dict) -> str:
    """A row's target as tables show it; results written before the mean row was renamed
    ("average") get the same label."""
    if row.get("kind") in (MEAN_ROW_KIND, "average"):
        return MEAN_ROW_LABEL
    return str(row["target"])


def format_fid_table(result: dict) -> str:
    """Markdown table of an `evaluate_fid` result, then a line naming the real reference."""
    lines = [
        "| target | features | FID | KID (x1e3) | n real | n synthetic |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        kid = row["kid_mean"] * 1e3
        kid_text = (
            f"{kid:.2f}" if row["kid_std"] is None else f"{kid:.2f} +- {row['kid_std'] * 1e3:.2f}"
        )
        fid = row["fid"]
        fid_text = "nan" if fid is None or math.isnan(fid) else f"{fid:.2f}"
        lines.append(
            f"| {row_label(row)} | {row['features']} | {fid_text} | {kid_text} | "
            f"{row['n_real']} | {row['n_fake']} |"
        )
    real = result.get("real", {})
    lines.append("")
    lines.append(
        f"real reference: split {real.get('split', ALL_SPLITS)} of {real.get('source')} "
        f"({real.get('n_images')} images, {real.get('n_masks')} masks)"
    )
    return "\n".join(lines)
