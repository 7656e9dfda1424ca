"""Label budgets of training runs: the budget of data.labels (or of a pseudo-labeled set's
head), and its checks on resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairforge.config import TrainConfig
from pairforge.errors import PairforgeError


def check_labels_option(config: TrainConfig, task) -> None:
    """PairforgeError when data.labels is set for a task that reads no masks."""
    if config.data.labels is not None and not task.needs_masks:
        raise PairforgeError(
            f"data.labels={config.data.labels}: task {task.name} reads no masks, so there is "
            "no label budget to draw; remove data.labels (an image model may see every image)"
        )


def training_budget(config: TrainConfig, task, ds):
    """The LabelBudget of data.labels drawn on `ds` (the training data), or None without one."""
    from pairforge.data.budget import make_budget, parse_labels_choice

    check_labels_option(config, task)
    if config.data.labels is None:
        return None
    size = parse_labels_choice(config.data.labels, "data.labels")  # tiles, None = all, or a file
    if isinstance(size, Path):
        return _budget_file(config, size, ds)
    try:
        return make_budget(
            ds, size, config.data.label_seed, config.data.label_tile_size, config.data.split
        )
    except PairforgeError as err:
        # make_budget names the CLI flag (--labels); training is configured by data.labels.
        raise PairforgeError(
            str(err).replace(f"--labels {size}:", f"data.labels={size}:", 1)
        ) from None


def _budget_file(config: TrainConfig, path: Path, ds):
    """The budget in the file data.labels names, checked against the training data (split,
    data.label_tile when set); its tiles must hold a whole training crop."""
    from pairforge.data.budget import load_budget_file

    budget = load_budget_file(path, ds, config.data.split, config.data.label_tile,
                              flag="data.labels")  # fmt: skip
    if budget.tile_size < config.data.crop_size:
        raise PairforgeError(
            f"data.labels={config.data.labels}: its tiles are {budget.tile_size} px, smaller "
            f"than data.crop_size {config.data.crop_size}; training crops lie inside the labeled "
            f"tiles, so use a budget of tiles >= {config.data.crop_size} px"
        )
    return budget


def check_same_budget(run_dir: Path, budget) -> None:
    """A resumed run must train on the budget it started with (data.path may have moved)."""
    import json

    from pairforge.core.run import INFO_FILE, MODEL_DIR

    try:
        record = json.loads((run_dir / MODEL_DIR / INFO_FILE).read_text())
    except (OSError, ValueError):
        return  # no weights yet: nothing was trained on another budget
    if not isinstance(record, dict) or "label_budget" not in record:
        return  # written before label budgets existed, i.e. without one
    now = None if budget is None else budget.to_dict()
    if record["label_budget"] != now:
        was = _describe_budget_dict(record["label_budget"])
        raise PairforgeError(
            f"{run_dir}: this run was trained on {was}, but data.path now gives "
            f"{'no label budget' if budget is None else 'the budget ' + budget.describe()}; the "
            "data changed. Resume with the dataset the run started on, or use another --out."
        )


def _describe_budget_dict(value) -> str:
    from pairforge.data.budget import budget_from_record

    try:
        budget = budget_from_record(value, "label_budget")
    except PairforgeError:
        return "an unreadable label budget"
    return "no label budget" if budget is None else f"the budget {budget.describe()}"


PSEUDO_RECORD = "pseudolabel.json"  # written by `seg pseudolabel` (seg.pseudo_sets)


@dataclass(frozen=True)
class PseudoLabels:
    """A pseudo-labeled training set: budget (its head's LabelBudget, the only true labels
    behind its masks) and info (the run record's "pseudo_labels": path, head_sha256, filled)."""

    budget: Any
    info: dict[str, Any]


def pseudo_labels_of(config: TrainConfig, task) -> PseudoLabels | None:
    """The pseudo-label source of data.path (None: not a `seg pseudolabel` set, or a task that
    reads no masks). PairforgeError when data.labels is set too (the set carries its head's
    budget), or when a task that encodes masks (joint, mask, sr) would read a thresholded set
    with unlabeled pixels (the codec needs a class at every pixel: use --filled-out)."""
    import json

    from pairforge.data.budget import budget_from_record

    path = Path(config.data.path) / PSEUDO_RECORD
    if not path.is_file() or not task.needs_masks:
        return None
    try:
        record = json.loads(path.read_text())
        head = record["head"]
        budget = budget_from_record(head["label_budget"], f"{path} head.label_budget")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PairforgeError(
            f"{path}: unreadable ({type(err).__name__}: {err}); rerun `pairforge seg pseudolabel`"
            " to rewrite the set"
        ) from None
    what = f"data.path {config.data.path} is a pseudo-labeled set (`seg pseudolabel`)"
    if budget is None:
        raise PairforgeError(f"{path}: {what} whose head records no label budget; rewrite it")
    if config.data.labels is not None:
        raise PairforgeError(
            f"data.labels={config.data.labels}: {what}; it carries its head's label budget "
            f"({budget.describe()}), the only true labels behind its masks. Remove data.labels "
            "(--labels) to train on it, or point data.path at the original labeled dataset"
        )
    filled = record.get("filled") is True
    kept = [m.get("kept_fraction") for m in (record.get("measurements") or {}).values()]
    unlabeled = not kept or any(k is None or k < 1.0 for k in kept)
    if task.has_mask_part and not filled and unlabeled:
        raise PairforgeError(
            f"{what} with unlabeled (ignore) pixels, its uncertain pixels and the head's select "
            f"tiles; task {task.name} encodes a mask and needs a class at every pixel. Write "
            "the filled set in the same pass (`pairforge seg pseudolabel HEAD --data D --out "
            "OUT --filled-out DIR`) and train on data.path=DIR"
        )
    info = {"path": str(config.data.path), "head_sha256": head.get("sha256"), "filled": filled}
    return PseudoLabels(budget, info)
