"""Mask statistics of real vs synthetic pairs: class fractions, component sizes, class-wise values.

Everything is measured on the evaluation sets' pixel grid (tiles at model resolution), so sizes
are in pixels of that grid. Components cut by a tile border count as separate, smaller
components in both sets alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError

# Pixels drawn per (class, channel) for value distances: enough for a stable W1, bounded memory.
MAX_VALUE_SAMPLES = 200_000


def class_fractions(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of labeled pixels per class: float64 (K,), sums to 1 (all zeros if none labeled).

    masks: (N, H, W) class indices 0..K-1; 255 (ignore) is not counted.
    """
    values = np.asarray(masks).reshape(-1)
    values = values[values != IGNORE_INDEX]
    counts = np.bincount(values, minlength=num_classes)[:num_classes].astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def connected_components(
    masks: np.ndarray, num_classes: int, connectivity: int = 8
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Connected components of each class in each mask (scipy.ndimage.label).

    Args:
        masks: (N, H, W) class indices (255 = ignore, belongs to no class).
        connectivity: 4 (edge neighbors) or 8 (edge and corner neighbors).

    Returns:
        (counts int64 (N, K): components of class k in mask n,
         sizes: list of K int64 arrays, the pixel count of every component of class k).
    """
    if connectivity not in (4, 8):
        raise PairforgeError(f"connectivity {connectivity}: use 4 or 8")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    masks = np.asarray(masks)
    counts = np.zeros((masks.shape[0], num_classes), dtype=np.int64)
    sizes: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for index, mask in enumerate(masks):
        for class_index in range(num_classes):
            labels, count = ndimage.label(mask == class_index, structure=structure)
            counts[index, class_index] = count
            if count:
                sizes[class_index].append(np.bincount(labels.reshape(-1))[1:])
    return counts, [
        np.concatenate(s).astype(np.int64) if s else np.zeros(0, np.int64) for s in sizes
    ]


def _summary(values: np.ndarray) -> dict | None:
    if values.size == 0:
        return None
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": float(values.max()),
    }


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float | None:
    """W1 between two samples; None when either is empty (nothing to compare)."""
    if a.size == 0 or b.size == 0:
        return None
    return float(stats.wasserstein_distance(a, b))


def _class_values(images: np.ndarray, masks: np.ndarray, class_index: int, rng) -> np.ndarray:
    """Values (P, C) of the pixels of one class, subsampled to MAX_VALUE_SAMPLES."""
    selected = masks == class_index  # (M, H, W)
    values = np.moveaxis(images, 1, -1)[selected]  # (P, C)
    if values.shape[0] > MAX_VALUE_SAMPLES:
        values = values[rng.choice(values.shape[0], MAX_VALUE_SAMPLES, replace=False)]
    return values


def compare_mask_stats(real, fake, *, connectivity: int = 8, bins: int = 64, seed: int = 0) -> dict:
    """Mask statistics of two EvalSets (`pairforge.eval.sets`), real first.

    Per class: pixel fraction, components per mask, component size summary and the Wasserstein
    distance (W1, pixels) between the real and synthetic component-size distributions. Per
    channel and class: histograms of physical values (shared bin edges from the real data's
    0.5-99.5 percentiles) and W1 between the real and synthetic values (channel units).

    Returns a JSON-ready dict {"metric": "mask_stats", "real", "fake", "settings", "classes",
    "channels", "summary"}; raises PairforgeError if either set has no masks.
    """
    _check_comparable(real, fake)
    num_classes = len(real.class_names)
    rng = np.random.default_rng(seed)
    fractions = {"real": class_fractions(real.masks, num_classes)}
    fractions["fake"] = class_fractions(fake.masks, num_classes)
    classes = _class_rows(real, fake, fractions, connectivity)
    channels = _channel_rows(real, fake, bins, rng)
    size_distances = [c["size_wasserstein"] for c in classes if c["size_wasserstein"] is not None]
    return {
        "metric": "mask_stats",
        "real": {
            "source": real.source,
            "split": real.split_label,
            "n_masks": real.num_masks,
        },
        "fake": {"source": fake.source, "n_masks": fake.num_masks},
        "settings": {
            "connectivity": connectivity,
            "bins": bins,
            "mask_size": list(real.masks.shape[-2:]),
            "size_unit": "pixels of the evaluation grid",
            "value_unit": "physical channel units (real dataset normalizer)",
            "seed": seed,
        },
        "classes": classes,
        "channels": channels,
        "summary": {
            "fraction_l1": float(np.abs(fractions["real"] - fractions["fake"]).sum()),
            "mean_size_wasserstein": float(np.mean(size_distances)) if size_distances else None,
        },
    }


def _check_comparable(real, fake) -> None:
    """PairforgeError when either set has no masks or the two have different classes."""
    for evalset, role in ((real, "real"), (fake, "synthetic")):
        if evalset.masks is None or evalset.num_masks == 0:
            raise PairforgeError(
                f"{evalset.source}: the {role} dataset has no masks; mask statistics need "
                "labeled samples (masks/<id>.png)"
            )
    if real.class_names != fake.class_names:
        raise PairforgeError(
            f"classes differ: real {real.class_names} vs synthetic {fake.class_names}; compare "
            "datasets with the same classes"
        )


def _class_rows(real, fake, fractions: dict, connectivity: int) -> list[dict]:
    """Per class: pixel fractions, components per mask, component sizes and their W1."""
    num_classes = len(real.class_names)
    real_counts, real_sizes = connected_components(real.masks, num_classes, connectivity)
    fake_counts, fake_sizes = connected_components(fake.masks, num_classes, connectivity)
    classes = []
    for k, name in enumerate(real.class_names):
        classes.append(
            {
                "class": name,
                "fraction_real": float(fractions["real"][k]),
                "fraction_fake": float(fractions["fake"][k]),
                "components_per_mask_real": float(real_counts[:, k].mean()),
                "components_per_mask_fake": float(fake_counts[:, k].mean()),
                "component_size_real": _summary(real_sizes[k]),
                "component_size_fake": _summary(fake_sizes[k]),
                "size_wasserstein": _wasserstein(real_sizes[k], fake_sizes[k]),
                # Kept for plots; lists of ints.
                "sizes_real": real_sizes[k].tolist(),
                "sizes_fake": fake_sizes[k].tolist(),
            }
        )
    return classes


def _channel_rows(real, fake, bins: int, rng) -> list[dict]:
    """Per channel and class: value histograms (edges from the real 0.5-99.5 percentiles) and
    the W1 of real and synthetic values, both in the real dataset's physical units."""
    num_classes = len(real.class_names)
    real_images = real.physical(real.labeled)
    fake_images = real.normalizer.decode(fake.images[fake.labeled])  # real units for both
    real_values = [_class_values(real_images, real.masks, k, rng) for k in range(num_classes)]
    fake_values = [_class_values(fake_images, fake.masks, k, rng) for k in range(num_classes)]
    channels = []
    for c, channel_name in enumerate(real.channel_names):
        all_real = real_images[:, c].reshape(-1)
        low, high = np.percentile(all_real, [0.5, 99.5])
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        per_class = []
        for k, class_name in enumerate(real.class_names):
            a, b = real_values[k][:, c], fake_values[k][:, c]
            per_class.append(
                {
                    "class": class_name,
                    "n_real_px": int(a.size),
                    "n_fake_px": int(b.size),
                    "mean_real": float(a.mean()) if a.size else None,
                    "mean_fake": float(b.mean()) if b.size else None,
                    "wasserstein": _wasserstein(a, b),
                    # Values outside the edges are clipped into the end bins.
                    "hist_real": np.histogram(np.clip(a, low, high), edges)[0].tolist(),
                    "hist_fake": np.histogram(np.clip(b, low, high), edges)[0].tolist(),
                }
            )
        channels.append(
            {"channel": channel_name, "bin_edges": edges.tolist(), "per_class": per_class}
        )
    return channels


def format_mask_stats_table(result: dict) -> str:
    """Markdown table: one row per class."""

    def number(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "| class | fraction real | fraction synthetic | components/mask real | "
        "components/mask synthetic | mean size real (px) | mean size synthetic (px) | "
        "size W1 (px) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["classes"]:
        mean_real = (row["component_size_real"] or {}).get("mean")
        mean_fake = (row["component_size_fake"] or {}).get("mean")
        lines.append(
            f"| {row['class']} | {number(row['fraction_real'])} | {number(row['fraction_fake'])} | "
            f"{number(row['components_per_mask_real'], 2)} | "
            f"{number(row['components_per_mask_fake'], 2)} | {number(mean_real, 1)} | "
            f"{number(mean_fake, 1)} | {number(row['size_wasserstein'], 2)} |"
        )
    return "\n".join(lines)


def plot_mask_stats(result: dict, out_dir: str | Path, prefix: str = "mask_stats") -> list[Path]:
    """Write PNG plots of a `compare_mask_stats` result; returns their paths.

    `<prefix>_fractions.png` (class fractions), `<prefix>_sizes.png` (component-size CDFs per
    class, log x), `<prefix>_values.png` (per-class value histograms, one row per channel).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = result["classes"]
    names = [c["class"] for c in classes]
    paths = []

    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.2))
    positions = np.arange(len(names))
    axis.bar(positions - 0.2, [c["fraction_real"] for c in classes], 0.4, label="real")
    axis.bar(positions + 0.2, [c["fraction_fake"] for c in classes], 0.4, label="synthetic")
    axis.set_xticks(positions, names, rotation=30 if len(names) > 6 else 0)
    axis.set_ylabel("pixel fraction")
    axis.legend()
    figure.tight_layout()
    paths.append(out_dir / f"{prefix}_fractions.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    columns = min(4, len(classes))
    rows = int(np.ceil(len(classes) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for axis, row in zip(axes.flat, classes):
        for key, label in (("sizes_real", "real"), ("sizes_fake", "synthetic")):
            sizes = np.sort(np.asarray(row[key]))
            if sizes.size:
                axis.step(
                    sizes, np.arange(1, sizes.size + 1) / sizes.size, where="post", label=label
                )
        axis.set_xscale("log")
        distance = row["size_wasserstein"]
        axis.set_title(
            f"{row['class']} (W1 {distance:.1f} px)" if distance is not None else row["class"]
        )
        axis.set_xlabel("component size (px)")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(classes) :]:
        axis.axis("off")
    figure.tight_layout()
    paths.append(out_dir / f"{prefix}_sizes.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    channels = result["channels"]
    figure, axes = plt.subplots(
        len(channels), len(names), figsize=(3.0 * len(names), 2.4 * len(channels)), squeeze=False
    )
    for row_axes, channel in zip(axes, channels):
        edges = np.asarray(channel["bin_edges"])
        for axis, entry in zip(row_axes, channel["per_class"]):
            for key, label in (("hist_real", "real"), ("hist_fake", "synthetic")):
                counts = np.asarray(entry[key], dtype=np.float64)
                if counts.sum() > 0:
                    axis.stairs(counts / counts.sum(), edges, label=label)
            axis.set_title(f"{channel['channel']} | {entry['class']}", fontsize=9)
            axis.legend(fontsize=7)
    figure.tight_layout()
    paths.append(out_dir / f"{prefix}_values.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)
    return paths
