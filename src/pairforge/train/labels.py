"""Label budgets of training runs: the budget of data.labels, and its checks on resume."""

from __future__ import annotations

from pathlib import Path

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
    from pairforge.data.budget import make_budget

    check_labels_option(config, task)
    if config.data.labels is None:
        return None
    size = None if config.data.labels == "all" else int(config.data.labels)
    try:
        return make_budget(
            ds, size, config.data.label_seed, config.data.label_tile_size, config.data.split
        )
    except PairforgeError as err:
        # make_budget names the CLI flag (--labels); training is configured by data.labels.
        raise PairforgeError(
            str(err).replace(f"--labels {size}:", f"data.labels={size}:", 1)
        ) from None


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
