"""`pairforge data check`: read every file of a dataset, summarize it and list every problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pairforge.data.dataset import IGNORE, IMAGE_DIR, IMAGE_SUFFIXES, load_dataset, read_array
from pairforge.errors import PairforgeError


def check_dataset(path: str | Path) -> dict:
    """Validate a dataset folder and summarize it.

    Returns a JSON-ready dict: `ok`, `problems` (list of messages, each naming its file),
    `samples`, `splits`, `labeled`, `channels` (name, unit, stored dtypes, min/max and
    0.5/99.5 percentiles in physical units), `sizes` (min/max height and width),
    `classes` (name, id, pixel fraction over labeled samples), `unlisted_files`.
    A dataset.yaml that cannot be read at all raises PairforgeError instead.
    """
    ds = load_dataset(path)
    spec = ds.spec
    problems: list[str] = []
    heights, widths, dtypes = [], [], set()
    per_channel: list[list[np.ndarray]] = [[] for _ in range(ds.num_channels)]
    class_counts = np.zeros(max(ds.num_classes, 1), dtype=np.int64)
    ignored = 0
    labeled = 0
    rng = np.random.default_rng(0)
    for sample_id in ds.ids():
        try:
            for f in ds._files[sample_id]:
                dtypes.add(str(read_array(f).dtype))
            image, mask = ds.read_pair(sample_id)
        except PairforgeError as err:
            problems.append(str(err))
            continue
        if not np.all(np.isfinite(image)):
            bad = int((~np.isfinite(image)).sum())
            problems.append(
                f"sample {sample_id!r}: {bad} non-finite pixel values (NaN/inf); fill or mask them"
            )
        heights.append(image.shape[1])
        widths.append(image.shape[2])
        flat = image.reshape(image.shape[0], -1)
        if flat.shape[1] > 200_000:
            flat = flat[:, rng.choice(flat.shape[1], 200_000, replace=False)]
        for c in range(ds.num_channels):
            per_channel[c].append(flat[c])
        if mask is not None:
            labeled += 1
            valid = mask[mask != IGNORE]
            ignored += int(mask.size - valid.size)
            if ds.num_classes:
                class_counts += np.bincount(valid, minlength=ds.num_classes)[: ds.num_classes]
    listed = set(ds.ids())
    unlisted = []
    if spec.splits:
        for p in sorted((ds.root / IMAGE_DIR).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                stem = p.stem
                if stem not in listed and not any(stem.startswith(f"{i}_") for i in listed):
                    unlisted.append(p.name)
        if unlisted:
            problems.append(
                f"{ds.root / IMAGE_DIR}: {len(unlisted)} image file(s) in no split "
                f"({', '.join(unlisted[:5])}); add them to splits in dataset.yaml or remove them"
            )
    channels = []
    for c, ch in enumerate(spec.channels):
        values = np.concatenate(per_channel[c]) if per_channel[c] else np.zeros(0)
        finite = values[np.isfinite(values)]
        stats = {"name": ch.name, "unit": ch.unit}
        if finite.size:
            p_lo, p_hi = np.percentile(finite, [0.5, 99.5])
            stats.update(
                min=float(finite.min()), max=float(finite.max()), p0_5=float(p_lo),
                p99_5=float(p_hi),
            )  # fmt: skip
        channels.append(stats)
    total = class_counts.sum()
    classes = [
        {
            "id": c.id,
            "name": c.name,
            "pixel_fraction": float(class_counts[i] / total) if total else None,
        }
        for i, c in enumerate(spec.classes)
    ]
    return {
        "path": str(ds.root),
        "ok": not problems,
        "problems": problems,
        "samples": len(ds),
        "labeled": labeled,
        "splits": {k: len(v) for k, v in spec.splits.items()},
        "sizes": {
            "height": [min(heights), max(heights)] if heights else None,
            "width": [min(widths), max(widths)] if widths else None,
        },
        "stored_dtypes": sorted(dtypes),
        "channels": channels,
        "classes": classes,
        "ignored_pixels": ignored,
        "unlisted_files": unlisted,
    }


def format_report(report: dict) -> str:
    """Human-readable summary of `check_dataset`'s result."""
    lines = [f"dataset {report['path']}: {report['samples']} samples, {report['labeled']} labeled"]
    if report["splits"]:
        lines.append("splits: " + ", ".join(f"{k}={v}" for k, v in report["splits"].items()))
    h, w = report["sizes"]["height"], report["sizes"]["width"]
    if h:
        lines.append(f"sizes: height {h[0]}..{h[1]} px, width {w[0]}..{w[1]} px")
    lines.append("stored dtypes: " + ", ".join(report["stored_dtypes"]))
    for ch in report["channels"]:
        if "min" in ch:
            lines.append(
                f"channel {ch['name']} [{ch['unit']}]: min {ch['min']:.4g}, max {ch['max']:.4g}, "
                f"p0.5 {ch['p0_5']:.4g}, p99.5 {ch['p99_5']:.4g}"
            )
    for cl in report["classes"]:
        frac = "n/a" if cl["pixel_fraction"] is None else f"{100 * cl['pixel_fraction']:.2f} %"
        lines.append(f"class {cl['id']} {cl['name']}: {frac} of labeled pixels")
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines.extend(f"  - {p}" for p in report["problems"])
    else:
        lines.append("no problems found")
    return "\n".join(lines)
