"""`pairforge data check`: read every file of a dataset, summarize it and list every problem."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.dataset import Dataset, load_dataset
from pairforge.data.files import read_array
from pairforge.data.layout import (
    IMAGE_DIR,
    IMAGE_SUFFIXES,
    MASK_DIR,
    MASK_SUFFIXES,
    sample_id_of,
    unlisted_image_files,
)
from pairforge.data.spec import DatasetSpec
from pairforge.errors import PairforgeError


def stray_files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Names in `folder` that are not sample files: hidden or temporary files (e.g. the
    `.gen000012.tif.tmp4711` of a killed writer), other suffixes, subfolders."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(".") or ".tmp" in p.name or p.suffix.lower() not in suffixes
        or p.is_dir()
    )  # fmt: skip


@dataclass
class _PixelTally:
    """What `check_dataset` gathers while reading: stored dtypes of every file read, sizes and
    pixels of the samples that read without a problem."""

    num_channels: int
    num_classes: int
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    dtypes: set[str] = field(default_factory=set)
    # Per channel: up to 200 000 sampled pixel values per sample (physical units).
    channel_values: list[list[np.ndarray]] = field(init=False)
    class_counts: np.ndarray = field(init=False)  # (max(K, 1),) labeled pixels per class index
    ignored: int = 0
    labeled: int = 0

    def __post_init__(self):
        self.channel_values = [[] for _ in range(self.num_channels)]
        self.class_counts = np.zeros(max(self.num_classes, 1), dtype=np.int64)

    def add(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> None:
        """Count one sample: image (C, H, W) physical units, mask (H, W) class indices or None."""
        self.heights.append(image.shape[1])
        self.widths.append(image.shape[2])
        flat = image.reshape(image.shape[0], -1)
        if flat.shape[1] > 200_000:
            flat = flat[:, rng.choice(flat.shape[1], 200_000, replace=False)]
        for c in range(self.num_channels):
            self.channel_values[c].append(flat[c])
        if mask is not None:
            self.labeled += 1
            valid = mask[mask != IGNORE_INDEX]
            self.ignored += int(mask.size - valid.size)
            k = self.num_classes
            if k:
                self.class_counts += np.bincount(valid, minlength=k)[:k]


def _read_samples(ds: Dataset, problems: list[str]) -> _PixelTally:
    """Read every sample once; each unreadable one adds its message to `problems`."""
    tally = _PixelTally(ds.num_channels, ds.num_classes)
    rng = np.random.default_rng(0)
    for sample_id in ds.ids():
        try:
            for f in ds.image_files(sample_id):
                tally.dtypes.add(str(read_array(f).dtype))
            image, mask = ds.read_pair(sample_id)
        except PairforgeError as err:
            problems.append(str(err))
            continue
        # NaN / inf pixels, truncated files and broken links are refused by read_pair above.
        tally.add(image, mask, rng)
    return tally


def _orphan_masks(ds: Dataset) -> list[str]:
    """Names of mask files in masks/ whose sample has no image file, listed or not."""
    image_dir, mask_dir = ds.root / IMAGE_DIR, ds.root / MASK_DIR
    if not mask_dir.is_dir():
        return []
    on_disk = set(ds.ids())  # ids with an image, listed or not
    for p in image_dir.iterdir() if image_dir.is_dir() else ():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            on_disk |= {p.stem, sample_id_of(p.name, ds.spec.channel_names)}
    return sorted(
        p.name
        for p in mask_dir.iterdir()
        if p.suffix.lower() in MASK_SUFFIXES and not p.name.startswith(".")
        and ".tmp" not in p.name and p.stem not in on_disk
    )  # fmt: skip


def _folder_notes(ds: Dataset, orphans: list[str], strays: list[str]) -> list[str]:
    """Warnings about files that do not break the dataset: orphan masks, stray files."""
    notes = []
    if orphans:
        notes.append(
            f"{ds.root / MASK_DIR}: {len(orphans)} mask(s) without an image "
            f"({', '.join(orphans[:5])}); add their images or delete them"
        )
    if strays:
        notes.append(
            f"{ds.root}: {len(strays)} stray file(s) that are not samples ({', '.join(strays[:5])}"
            f"{', ...' if len(strays) > 5 else ''}); hidden .tmp files are leftovers of an "
            "interrupted write: delete them"
        )
    return notes


def _channel_stats(spec: DatasetSpec, tally: _PixelTally) -> list[dict]:
    """Per channel: name, unit and (if any finite value was read) min, max, 0.5/99.5 percentiles."""
    channels = []
    for c, ch in enumerate(spec.channels):
        parts = tally.channel_values[c]
        values = np.concatenate(parts) if parts else np.zeros(0)
        finite = values[np.isfinite(values)]
        stats = {"name": ch.name, "unit": ch.unit}
        if finite.size:
            p_lo, p_hi = np.percentile(finite, [0.5, 99.5])
            stats.update(
                min=float(finite.min()), max=float(finite.max()), p0_5=float(p_lo),
                p99_5=float(p_hi),
            )  # fmt: skip
        channels.append(stats)
    return channels


def _class_fractions(spec: DatasetSpec, tally: _PixelTally) -> list[dict]:
    """Per class: id, name and its share of the labeled pixels (None without labeled pixels)."""
    total = tally.class_counts.sum()
    return [
        {
            "id": c.id,
            "name": c.name,
            "pixel_fraction": float(tally.class_counts[i] / total) if total else None,
        }
        for i, c in enumerate(spec.classes)
    ]


def check_dataset(path: str | Path) -> dict:
    """Validate a dataset folder and summarize it.

    Returns a JSON-ready dict: `ok`, `problems` (list of messages, each naming its file),
    `samples`, `splits`, `labeled`, `channels` (name, unit, stored dtypes, min/max and
    0.5/99.5 percentiles in physical units), `sizes` (min/max height and width),
    `classes` (name, id, pixel fraction over labeled samples), `unlisted_files`,
    `orphan_masks` (mask files without an image), `stray_files` (folder/name).
    `warnings` lists what does not break the dataset but deserves a look (masks without an
    image, stray temporary files); they do not make `ok` false.
    A dataset.yaml that cannot be read at all raises PairforgeError instead.
    """
    with warnings.catch_warnings():
        # Files in no split are reported below as a problem; loading would also warn of them.
        warnings.simplefilter("ignore", UserWarning)
        ds = load_dataset(path)
    spec = ds.spec
    problems: list[str] = []
    tally = _read_samples(ds, problems)
    unlisted = unlisted_image_files(ds.root, spec)
    if unlisted:
        problems.append(
            f"{ds.root / IMAGE_DIR}: {len(unlisted)} image file(s) in no split "
            f"({', '.join(unlisted[:5])}); add them to splits in dataset.yaml or remove them"
        )
    orphans = _orphan_masks(ds)
    strays = [
        f"{folder}/{name}"
        for folder, suffixes in ((IMAGE_DIR, IMAGE_SUFFIXES), (MASK_DIR, MASK_SUFFIXES))
        for name in stray_files(ds.root / folder, suffixes)
    ]
    heights, widths = tally.heights, tally.widths
    return {
        "path": str(ds.root),
        "ok": not problems,
        "problems": problems,
        "warnings": _folder_notes(ds, orphans, strays),
        "samples": len(ds),
        "labeled": tally.labeled,
        "splits": {k: len(v) for k, v in spec.splits.items()},
        "sizes": {
            "height": [min(heights), max(heights)] if heights else None,
            "width": [min(widths), max(widths)] if widths else None,
        },
        "stored_dtypes": sorted(tally.dtypes),
        "channels": _channel_stats(spec, tally),
        "classes": _class_fractions(spec, tally),
        "ignored_pixels": tally.ignored,
        "unlisted_files": unlisted,
        "orphan_masks": orphans,
        "stray_files": strays,
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
    for note in report.get("warnings", []):
        lines.append(f"warning: {note}")
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s):")
        lines.extend(f"  - {p}" for p in report["problems"])
    else:
        lines.append("no problems found")
    return "\n".join(lines)
