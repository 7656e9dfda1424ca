"""Pseudo-labels for every real measurement of a split: a head's confident predictions as a dataset.

`pseudolabel` segments each measurement with sliding windows (`segment_measurement`), keeps the
head's argmax where its uncertainty (Jensen-Shannon by default) is at most a threshold and marks
every other pixel unlabeled (the dataset's ignore_index). Inside the head budget's FIT tiles the
mask is the true label (read through the `BudgetedDataset`, so inside the budget); inside its
SELECT tiles it is unlabeled, so they stay held out for the selection steps downstream (the
distilled segmenter's best epoch). No label outside the head's budget is read.

The threshold ("auto") is chosen inside the budget: on the pixels of the head budget's select
tiles, for keep fractions 0.50, 0.55, ..., 1.00 the uncertainty quantile is a candidate and the
largest candidate whose kept-pixel accuracy reaches the target wins (none does: the 0.50 one).
A budget without select tiles (or without labeled select pixels) uses a fixed keep fraction per
measurement (its most certain pixels). A number is used as it is.

OUT is a standard dataset (same channels, classes and normalization as the data; images copied
as float32 TIFF) plus OUT/uncertainty/<id>.tif (float32 (H, W)), OUT/soft/<id>.npy (with
`soft`: the head's blended probabilities, float16 (K, H, W), not overwritten by true labels),
OUT/pseudolabel.json and OUT/.pseudolabel/ (settings.json: the request and the chosen threshold,
a resume must match; records/<id>.json: written last, a measurement is done once its record and
files exist). With `filled_out` the filled set for generators is written in the same pass
(`seg.pseudo_sets`: the head's argmax everywhere, true labels in the fit tiles only). Sharded
under `accelerate launch`: process r labels ids[r::R]; see `seg.pseudo_sets`.

Memory: one measurement at a time. Measured on a full-size 1270 x 10960 grain measurement
(`bench/bench_pseudolabel_memory.py`: demo head of 10 MLPs, 2 channels, 3 classes, windows
without overlap, --filled-out too): 1.87 GiB peak RSS of the whole process (torch and the head
included), 274 s on one thread of a busy 2-core CPU. Smaller runs grow about 100 bytes per
full-resolution pixel (upsampled probabilities and maps, masks, copies).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_json
from pairforge.seg.pseudo_sets import PSEUDO_RECORD, STATE_DIR

KEEP_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # keep 50 % .. 100 % of pixels
TRUE_LABELS = (
    "inside the head budget's fit tiles the mask is the true label (those labels are in the "
    "budget); inside its select tiles it is unlabeled (held out for selection downstream)"
)


@dataclass(frozen=True)
class PseudoSettings:
    """What `pseudolabel` does: split to label; threshold "auto" or a number (uncertainty at
    most this is kept); target_accuracy (auto: kept-pixel accuracy on the select tiles);
    keep_fraction (auto without select tiles: kept pixels per measurement); uncertainty (js |
    entropy | disagreement); soft (also write the probabilities); overlap (window overlap in
    model px, None: half a window)."""

    split: str = "train"
    threshold: str | float = "auto"
    target_accuracy: float = 0.95
    keep_fraction: float = 0.8
    uncertainty: str = "js"
    soft: bool = False
    overlap: int | None = None


def parse_threshold(text: str | float) -> str | float:
    """`--threshold` text -> "auto" or a float >= 0; PairforgeError naming the flag."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise PairforgeError(
            f"--threshold {text!r}: give 'auto' (chosen on the head budget's select tiles) or a "
            "number >= 0 (pixels with uncertainty at most this keep the head's label)"
        )
    return value


def _check_settings(settings: PseudoSettings) -> None:
    from pairforge.seg.ensemble import check_uncertainty_kind

    check_uncertainty_kind(settings.uncertainty, "--uncertainty")
    if not 0.0 < settings.target_accuracy <= 1.0:
        raise PairforgeError(
            f"--target-accuracy {settings.target_accuracy}: give a fraction in (0, 1], e.g. 0.95"
        )
    if not 0.0 < settings.keep_fraction <= 1.0:
        raise PairforgeError(
            f"--keep-fraction {settings.keep_fraction}: give a fraction in (0, 1], e.g. 0.8"
        )


# ---------------------------------------------------------------------------------------------
# The threshold
# ---------------------------------------------------------------------------------------------
def pick_threshold(uncertainty: np.ndarray, correct: np.ndarray, target: float) -> dict[str, Any]:
    """The largest uncertainty quantile of KEEP_GRID whose kept pixels (uncertainty <= it) are
    at least `target` correct; none reaches it: the 0.50 quantile. uncertainty, correct: (N,)
    of labeled select-tile pixels. Returns {"value", "reached", "grid": rows per keep}."""
    values = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    right = np.asarray(correct, dtype=bool).reshape(-1)
    rows = []
    for keep in KEEP_GRID:
        threshold = float(np.quantile(values, keep))
        kept = values <= threshold
        rows.append({"keep": keep, "threshold": threshold, "kept_fraction": float(kept.mean()),
                     "accuracy": float(right[kept].mean())})  # fmt: skip
    good = [r for r in rows if r["accuracy"] >= target]
    best = max(good, key=lambda r: r["threshold"]) if good else rows[0]
    return {"value": best["threshold"], "reached": bool(good), "grid": rows}


def _tile_regions(budget, sample_id: str, part: str, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W): pixels of the sample inside the budget tiles of `part`."""
    region = np.zeros(shape, dtype=bool)
    t = budget.tile_size
    for tile_id, y, x in budget.part(part):
        if tile_id == sample_id:
            region[y : y + t, x : x + t] = True
    return region


def choose_threshold(head, view, settings: PseudoSettings) -> dict[str, Any]:
    """The threshold record: {"value" (None: per measurement keep fraction), "method", ...}.
    "auto" reads only the select tiles' labels of the head's budget (through `view`)."""
    from pairforge.seg.sliding import segment_measurement

    if settings.threshold != "auto":
        return {"value": float(settings.threshold), "method": "fixed (--threshold)"}
    budget = view.budget
    values, correct = [], []
    for sample_id in dict.fromkeys(t[0] for t in budget.select_tiles):
        image = view.read_image(sample_id)
        result = segment_measurement(head, image, overlap=settings.overlap)
        truth = view.read_mask(sample_id, expected_shape=image.shape[1:])
        inside = _tile_regions(budget, sample_id, "select", truth.shape) & (truth != IGNORE_INDEX)
        values.append(result.uncertainty(settings.uncertainty).numpy()[inside])
        correct.append(result.mask.numpy()[inside] == truth[inside])
    pixels = int(sum(v.size for v in values))
    if pixels == 0:
        return {
            "value": None,
            "method": "no labeled select tiles in the head's budget: each measurement keeps its "
            f"{settings.keep_fraction:g} most certain pixels",
            "keep_fraction": settings.keep_fraction,
        }
    picked = pick_threshold(np.concatenate(values), np.concatenate(correct),
                            settings.target_accuracy)  # fmt: skip
    return {
        "value": picked["value"],
        "method": "largest uncertainty quantile (keep 0.50..1.00 of the pixels) whose kept "
        "accuracy on the head budget's select tiles reaches the target"
        + ("" if picked["reached"] else "; no quantile reached it: keep 0.50"),
        "target_accuracy": settings.target_accuracy,
        "reached": picked["reached"],
        "select_pixels": pixels,
        "grid": picked["grid"],
    }


# ---------------------------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------------------------
def pseudo_mask(
    labels: np.ndarray,
    uncertainty: np.ndarray,
    threshold: float,
    truth: np.ndarray | None,
    fit_region: np.ndarray,
    select_region: np.ndarray,
) -> np.ndarray:
    """int64 (H, W): `labels` where uncertainty <= threshold, else IGNORE_INDEX; true labels
    (`truth`, budget view) in `fit_region`, IGNORE_INDEX in `select_region`."""
    mask = np.where(uncertainty <= threshold, labels, IGNORE_INDEX).astype(np.int64)
    if truth is not None:
        mask[fit_region] = truth[fit_region]
    mask[select_region] = IGNORE_INDEX
    return mask


def _label_one(head, view, sample_id: str, threshold: dict, settings: PseudoSettings, filled: bool):
    """(image, pseudo mask, uncertainty float32, probs (K, H, W), filled mask or None, record)
    of one measurement (`filled`: also the filled mask, `pseudo_sets.filled_mask`)."""
    from pairforge.seg.pseudo_sets import filled_mask
    from pairforge.seg.sliding import segment_measurement

    image = view.read_image(sample_id)
    result = segment_measurement(head, image, overlap=settings.overlap)
    maps = result.uncertainty(settings.uncertainty).numpy().astype(np.float32)
    value = threshold["value"]
    if value is None:  # no select tiles: this measurement's own keep-fraction quantile
        value = float(np.quantile(maps.astype(np.float64), settings.keep_fraction))
    shape = maps.shape
    fit = _tile_regions(view.budget, sample_id, "fit", shape)
    select = _tile_regions(view.budget, sample_id, "select", shape)
    truth = view.read_mask(sample_id, expected_shape=shape) if view.has_mask(sample_id) else None
    labels = result.mask.numpy()
    mask = pseudo_mask(labels, maps, value, truth, fit, select)
    full = filled_mask(labels, truth, fit) if filled else None
    outside = ~(fit | select)
    record = {
        "id": sample_id,
        "shape": list(shape),
        "threshold": value,
        "kept_fraction": float((mask != IGNORE_INDEX).mean()),
        "head_kept_fraction": float((maps[outside] <= value).mean()) if outside.any() else None,
        "true_label_pixels": int((fit & (mask != IGNORE_INDEX)).sum()),
        "held_out_pixels": int(select.sum()),
    }
    return image, mask, maps, result.probs.numpy(), full, record


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
def _settings_record(head_sha: str, dataset, settings: PseudoSettings) -> dict[str, Any]:
    return {"head_sha256": head_sha, "dataset": dataset.spec.name, **asdict(settings)}


def _check_request(state: Path, request: dict) -> dict | None:
    """The saved threshold when settings.json exists and matches `request` (None: no file); a
    folder started with other settings is an error naming the first difference (every process
    checks, so all stop)."""
    path = state / "settings.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    for key, value in request.items():
        if saved.get("request", {}).get(key) != value:
            raise PairforgeError(
                f"{path}: this folder was started with {key}={saved['request'].get(key)!r}, "
                f"now {value!r}; rerun with the same head and flags to resume, or choose "
                "another --out"
            )
    return saved["threshold"]


def _resume_threshold(state: Path, request: dict, compute: Callable[[], dict]) -> dict:
    """The chosen threshold: from settings.json when it matches `request`, else computed and
    recorded (main process only)."""
    saved = _check_request(state, request)
    if saved is not None:
        return saved
    threshold = compute()
    atomic_write_json(state / "settings.json", {"request": request, "threshold": threshold})
    return threshold


def pseudolabel(
    head,
    data: str | Path,
    out: str | Path,
    settings: PseudoSettings = PseudoSettings(),
    *,
    head_path: str | Path | None = None,
    filled_out: str | Path | None = None,
    echo: Callable[[str], None] = print,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> dict[str, Any] | None:
    """Write the pseudo-labeled dataset OUT of split `settings.split` of `data` (see the module
    docstring) and, with `filled_out`, the filled set there (`seg.pseudo_sets`); resumes a
    folder started with the same head and settings. Sharded: every process calls it with its
    index (`barrier`: e.g. PartialState.wait_for_everyone) and labels ids[index::num]; the
    main process (index 0) chooses the threshold and writes dataset.yaml and pseudolabel.json.
    Returns (main process) the pseudolabel.json record plus "segmented" (ids labeled by this
    call, all processes); other processes return None."""
    from pairforge.core.dataset_writer import module_sha256
    from pairforge.data.budget_view import BudgetedDataset
    from pairforge.data.dataset import load_dataset
    from pairforge.seg import pseudo_sets as ps

    _check_settings(settings)
    budget = head.label_budget
    if budget is None:
        raise PairforgeError(
            f"head {head_path or '(in memory)'}: records no label budget, so the labels behind its "
            "pseudo-labels are unknown; fit it again with `pairforge seg fit --labels N`"
        )
    dataset = load_dataset(data)
    view = BudgetedDataset(dataset, budget)
    ids = dataset.ids(settings.split)
    if not ids:
        raise PairforgeError(
            f"{data}: split {settings.split!r} is empty (splits: {sorted(dataset.spec.splits)}); "
            "pass --split with the split to pseudo-label"
        )
    out, is_main = Path(out), process_index == 0
    head_sha = module_sha256(head.ensemble)
    state = out / STATE_DIR
    sets = ps.PseudoSets(out, filled_out, dataset, settings.soft)
    request = _settings_record(head_sha, dataset, settings)
    _check_request(state, request)
    if is_main:
        _resume_threshold(state, request, lambda: choose_threshold(head, view, settings))
    barrier()  # the others read the main process's threshold
    threshold = _check_request(state, request)
    segmented = []
    for sample_id in ps.shard_ids(ids, process_index, num_processes):
        if sets.done(sample_id):
            echo(f"{sample_id}: done before, skipped")
            continue
        image, mask, maps, probs, filled, record = _label_one(
            head, view, sample_id, threshold, settings, filled=filled_out is not None
        )
        sets.write(sample_id, image, mask, maps, probs, filled, record, settings.split)
        segmented.append(sample_id)
        echo(f"{sample_id}: {tuple(mask.shape)} kept {record['kept_fraction']:.3f}")
    ps.write_segmented(out, process_index, segmented)
    barrier()  # every measurement is written
    if not is_main:
        return None
    records = {i: sets.record(i) for i in ids if sets.done(i)}
    summary = _summary(head, head_sha, head_path, data, dataset, settings, threshold, records)
    sets.finish(ids, settings.split, summary)
    return {**summary, "segmented": ps.read_segmented(out, num_processes)}


def _summary(head, head_sha, head_path, data, dataset, settings, threshold, records) -> dict:
    budget = head.label_budget
    pixels = sum(r["shape"][0] * r["shape"][1] for r in records.values())
    kept = sum(r["kept_fraction"] * r["shape"][0] * r["shape"][1] for r in records.values())
    return {
        "head": {
            "path": None if head_path is None else str(head_path),
            "sha256": head_sha,
            "label_budget": budget.to_dict(),
        },  # fmt: skip
        "labels": budget.summary(),
        "data": str(data),
        "dataset": dataset.spec.name,
        "split": settings.split,
        "uncertainty": settings.uncertainty,
        "threshold": threshold,
        "true_labels": TRUE_LABELS,
        "soft": settings.soft,
        "scale": {
            "crop_size": head.info.crop_size,
            "resolution": head.info.resolution,
            "normalizer": head.info.normalizer,
        },  # fmt: skip
        "kept_fraction": kept / pixels if pixels else None,
        "measurements": records,
    }


def summary_line(record: dict[str, Any], out) -> str:
    """One line on a written set: measurements, threshold and how it was chosen, kept pixels."""
    chosen = record["threshold"]
    value = "per measurement" if chosen["value"] is None else f"{chosen['value']:.4g}"
    return (
        f"{len(record['measurements'])} measurements written to {out} ({len(record['segmented'])} "
        f"this run); threshold {value} ({chosen['method']}); kept {record['kept_fraction']:.3f}"
    )


def read_pseudo_record(path: str | Path) -> dict[str, Any]:
    """OUT/pseudolabel.json of a pseudo-labeled set; PairforgeError naming the file and fix."""
    file = Path(path) / PSEUDO_RECORD
    try:
        record = json.loads(file.read_text())
        record["head"]["label_budget"]  # noqa: B018 - the key the consumers check
    except FileNotFoundError:
        raise PairforgeError(
            f"--pseudo {path}: no {PSEUDO_RECORD}; write the set with `pairforge seg pseudolabel`"
            " (an interrupted one: rerun it to finish)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PairforgeError(
            f"{file}: unreadable ({type(err).__name__}: {err}); rerun `pairforge seg pseudolabel`"
        ) from None
    return record
