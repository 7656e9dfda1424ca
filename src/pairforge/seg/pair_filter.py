"""`pairforge seg filter`: keep the generated pairs whose masks a few-label head agrees with.

For every pair of a generated set (`pairforge generate` / `sample` / `seg autolabel`: a dataset
plus manifest.json) the head segments the generated image and the pair's agreement is the
fraction of its labeled mask pixels where the head's argmax equals the mask (ignored pixels
excluded); its per-class IoU is stored too. Generated images are at their generator's model
scale (source px per px = crop_size / resolution of the run whose resolution is the image
side); the head sees them at its own scale, so the set's scale must divide the head's by an
integer factor f >= 1 (the image is area-downsampled by f, segmented, and the probabilities
upsampled back); any other scale is refused.

Threshold: a number keeps pairs with agreement >= it. "auto" is chosen inside the head's label
budget: the head's pixel agreement with the true labels of each of its budget's select tiles
(read through a `BudgetedDataset` of --data, at the head's scale), threshold = the minimum over
those tiles (a pair is kept when the head agrees with its mask at least as well as with the
worst real select tile). A budget without select tiles keeps the `keep_fraction` pairs of
highest agreement (threshold = the agreement of the last one kept; ties are kept too).

OUT is a standard dataset of the kept pairs (the set's spec, splits restricted to them; image
and mask files copied byte for byte under the same ids), OUT/manifest.json (the set's manifest
plus "filter" and a "head" entry {path, sha256, label_budget} as `seg autolabel` writes, so
`core.budgets.manifest_label_sources` lists the generators and the head), OUT/filter.json (the
"filter" record) and OUT/.filter/ (settings.json: a rerun must match; pairs/<id>.json: a pair's
scores, reused by a rerun; threshold.json).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, atomic_write_json, atomic_write_text, ensure_writable_dir
from pairforge.seg.pair_scores import (
    MANIFEST,
    check_auto,
    check_classes,
    choose_threshold,
    pair_scores,
    read_manifest,
    scale_factor,
    segment_pair,
    set_scale,
)

FILTER_RECORD = "filter.json"
STATE_DIR = ".filter"
METRIC = "pixel agreement"


@dataclass(frozen=True)
class FilterSettings:
    """min_agreement: "auto" (on the head budget's select tiles) or a number in [0, 1];
    keep_fraction: pairs kept when the budget has no select tile (auto only)."""

    min_agreement: str | float = "auto"
    keep_fraction: float = 0.5


def parse_min_agreement(text: str | float) -> str | float:
    """`--min-agreement` text -> "auto" or a float in [0, 1]; PairforgeError naming the flag."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise PairforgeError(
            f"--min-agreement {text!r}: give 'auto' (the head's worst agreement with its budget's "
            "select tiles) or a fraction of pixels in [0, 1], e.g. 0.8"
        )
    return value


def _check_keep_fraction(value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise PairforgeError(
            f"--keep-fraction {value}: give a fraction of pairs in (0, 1], e.g. 0.5"
        )


# ---------------------------------------------------------------------------------------------
# The filtered set
# ---------------------------------------------------------------------------------------------
def _check_state(out: Path, set_dir: Path, request: dict) -> None:
    """A new OUT, or one started with the same request; anything else is an error."""
    path = out / STATE_DIR / "settings.json"
    if path.exists():
        saved = json.loads(path.read_text())
        for key, value in request.items():
            if saved.get(key) != value:
                raise PairforgeError(
                    f"{path}: this folder was filtered with {key}={saved.get(key)!r}, now "
                    f"{value!r}; rerun with the same set, head and flags, or choose another --out"
                )
        return
    if out.resolve() == set_dir.resolve():
        raise PairforgeError(f"--out {out} is SET itself; choose another folder")
    if out.exists() and any(out.iterdir()):
        raise PairforgeError(
            f"--out {out}: exists and is not a `seg filter` output; choose another folder"
        )
    ensure_writable_dir(out / STATE_DIR / "pairs", "filtered set folder")
    atomic_write_json(path, request)


def _copy(source: Path, target: Path) -> None:
    if not (target.exists() and target.stat().st_size == source.stat().st_size):
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def _score_pairs(head, dataset, out: Path, factor: int) -> dict[str, dict]:
    """Scores per pair id; from OUT/.filter/pairs/<id>.json when done before."""
    names = [c.name for c in dataset.spec.classes]
    scores = {}
    for sample_id in dataset.ids():
        path = out / STATE_DIR / "pairs" / f"{sample_id}.json"
        if path.exists():
            scores[sample_id] = json.loads(path.read_text())
            continue
        image = dataset.read_image(sample_id)
        mask = dataset.read_mask(sample_id, expected_shape=image.shape[1:])
        if mask is None:
            score = {"agreement": None, "iou": dict.fromkeys(names), "labeled_pixels": 0}
        else:
            score = pair_scores(segment_pair(head, image, factor), mask, names)
        atomic_write_json(path, score)
        scores[sample_id] = score
    return scores


def _head_entry(head, head_path, head_sha: str, manifest: dict, set_dir: Path) -> dict:
    budget = head.label_budget
    entry = {"path": None if head_path is None else str(Path(head_path).resolve()),
             "sha256": head_sha, "label_budget": None if budget is None else budget.to_dict()}  # fmt: skip
    earlier = manifest.get("head")
    if isinstance(earlier, dict) and earlier.get("label_budget") != entry["label_budget"]:
        raise PairforgeError(
            f"{set_dir}/{MANIFEST}: its masks came from a head with another label budget "
            "(seg autolabel); a manifest records one head, so filtering it with this head would "
            "hide one budget: filter with the head that labeled it"
        )
    return entry


def filter_pairs(
    head,
    set_dir: str | Path,
    out: str | Path,
    settings: FilterSettings = FilterSettings(),
    *,
    data: str | Path | None = None,
    head_path: str | Path | None = None,
    echo=print,
) -> dict[str, Any]:
    """Write OUT (see the module docstring); returns the "filter" record."""
    from pairforge.core.dataset_writer import module_sha256
    from pairforge.data.dataset import load_dataset

    _check_keep_fraction(settings.keep_fraction)
    if settings.min_agreement == "auto":
        check_auto(head, data)
    set_dir, out = Path(set_dir), Path(out)
    manifest = read_manifest(set_dir)
    dataset = load_dataset(set_dir)
    ids = dataset.ids()
    if not ids:
        raise PairforgeError(f"{set_dir}: holds no pairs; generate some first")
    check_classes(head, dataset, set_dir)
    factor = scale_factor(head, set_scale(manifest, set_dir, dataset.image_size(ids[0])), set_dir)
    head_sha = module_sha256(head.ensemble)
    entry = _head_entry(head, head_path, head_sha, manifest, set_dir)
    request = {
        "set": str(set_dir.resolve()),
        "set_manifest_sha256": _manifest_sha256(manifest),
        "head_sha256": head_sha,
        "data": None if data is None else str(Path(data).resolve()),
        **asdict(settings),
    }
    _check_state(out, set_dir, request)
    scores = _score_pairs(head, dataset, out, factor)
    threshold_path = out / STATE_DIR / "threshold.json"
    if threshold_path.exists():
        threshold = json.loads(threshold_path.read_text())
    else:
        agreements = [s["agreement"] for s in scores.values()]
        threshold = choose_threshold(head, data, settings, agreements)
        atomic_write_json(threshold_path, threshold)
    value = threshold["value"]
    pairs = {i: {**s, "kept": s["agreement"] is not None and s["agreement"] >= value}
             for i, s in scores.items()}  # fmt: skip
    kept = [i for i in ids if pairs[i]["kept"]]
    record = {
        "head": entry, "threshold": value, "method": threshold["method"],
        "threshold_details": threshold, "metric": METRIC, "kept": len(kept), "total": len(ids),
        "kept_fraction": len(kept) / len(ids), "scale_factor": factor, "set": str(set_dir),
        "labels": None if head.label_budget is None else head.label_budget.summary(),
        "pairs": pairs,
    }  # fmt: skip
    _write_output(dataset, out, kept, record, manifest)
    echo(summary_line(record, out))
    return record


def _manifest_sha256(manifest: dict) -> str:
    """sha256 of what a set's manifest says about its pairs: every key but the last session's
    counts (`generated_this_session`, rewritten by a generate rerun that made nothing)."""
    import hashlib

    content = {k: v for k, v in manifest.items() if k != "generated_this_session"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _write_output(dataset, out: Path, kept: list[str], record: dict, manifest: dict) -> None:
    """The kept pairs' files (copied as they are), dataset.yaml, filter.json, manifest.json."""
    from pairforge.data.spec import SPEC_FILE

    files = [f for i in kept for f in (*dataset.image_files(i), dataset.mask_path(i))]
    for folder in sorted({f.parent.name for f in files}):
        ensure_writable_dir(out / folder, "filtered set folder")
    for source in files:
        _copy(source, out / source.parent.name / source.name)
    spec = dataset.spec.model_copy(deep=True)
    keep = set(kept)
    spec.splits = {s: [i for i in members if i in keep]
                   for s, members in dataset.spec.splits.items()}  # fmt: skip
    atomic_write_text(out / SPEC_FILE, spec.to_yaml())
    atomic_write_json(out / FILTER_RECORD, record)
    # manifest.json last: a set with it is complete.
    atomic_write_json(out / MANIFEST, {**manifest, "head": record["head"], "filter": record})


def summary_line(record: dict[str, Any], out) -> str:
    """kept n of N (fraction), threshold and method."""
    return (
        f"kept {record['kept']} of {record['total']} pairs ({record['kept_fraction']:.3f}) in "
        f"{out}; threshold {record['threshold']:.4g} {METRIC} ({record['method']})"
    )


# ---------------------------------------------------------------------------------------------
# The command (registered as `pairforge seg filter` with `register`)
# ---------------------------------------------------------------------------------------------
def filter_command(
    set_dir: Path = typer.Argument(..., help="Generated pair set (dataset + manifest.json)."),
    head_dir: Path = typer.Option(..., "--head", help="Head folder (pairforge seg fit)."),
    out: Path = typer.Option(..., "--out", help="Folder for the kept pairs (a dataset)."),
    data: Path = typer.Option(
        None, "--data", help="Dataset of the head's label budget (needed by --min-agreement auto)."
    ),
    min_agreement: str = typer.Option(
        "auto", "--min-agreement", help="Keep pairs with agreement >= this: auto or a number."
    ),
    keep_fraction: float = typer.Option(
        0.5, "--keep-fraction", help="auto without select tiles: fraction of pairs kept."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device of the head."),
) -> None:
    """Keep the generated pairs whose masks the head agrees with (pixel agreement); resumable.
    OUT/filter.json and OUT/manifest.json record every pair's agreement and IoU.

    Example:

      pairforge seg filter gen/pairs --head heads/g8 --data data/grains --out gen/filtered
    """
    from pairforge.seg.head import SegmentationHead

    settings = FilterSettings(parse_min_agreement(min_agreement), keep_fraction)
    _check_keep_fraction(keep_fraction)
    head = SegmentationHead.load(head_dir, device=device)
    filter_pairs(head, set_dir, out, settings, data=data, head_path=head_dir, echo=typer.echo)


def register(app: typer.Typer) -> None:
    """Add `filter` to a typer app (the seg sub-app)."""
    app.command("filter")(filter_command)
