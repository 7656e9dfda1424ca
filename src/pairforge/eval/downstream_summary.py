"""Downstream results: mean +- std over seeds per (condition, budget), the paired differences
against real-only (same budget, same seed), the Markdown table, and writing downstream.json /
.md / .png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pairforge.core.stats import format_difference, mean_ci, paired_difference
from pairforge.eval.downstream_plan import CONDITIONS

# What the labels-touched column counts (the budget's: the same for every condition).
LABEL_KEYS = ("budget", "tiles", "fit_tiles", "select_tiles", "pixels", "tile_size", "split")


def budget_order(budget) -> tuple:
    """Sort key of budget labels: numbers ascending, 'all' last (older results: None first)."""
    if budget is None:
        return (-1, 0)
    text = str(budget)
    return (1, 0) if text == "all" else (0, int(text))


def _uniform(values: list):
    """The value when all are equal, else the sorted distinct values (e.g. pairs per seed)."""
    distinct = sorted(set(values), key=str)
    return distinct[0] if len(distinct) == 1 else distinct


def summarize_runs(runs: list[dict]) -> list[dict]:
    """Per (condition, budget): seeds, mean, sample std (ddof 1; None for one seed) and 95 % t
    interval of test mIoU, the labels touched (the budget's tiles and pixels; None for runs of
    older results without "labels"), real crops and synthetic pairs."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["condition"], run["budget"]), []).append(run)
    order = {c: i for i, c in enumerate(CONDITIONS)}
    summary = []
    for (condition, budget), members in sorted(
        groups.items(), key=lambda item: (budget_order(item[0][1]), order[item[0][0]])
    ):
        test = [float(m["test_miou"]) for m in members]
        select = [
            m.get("best_select_miou", m.get("best_val_miou"))
            for m in members
            if m.get("best_select_miou", m.get("best_val_miou")) is not None
        ]
        labels = [m.get("labels") for m in members]
        interval = mean_ci(test)
        summary.append(
            {
                "condition": condition,
                "budget": budget,
                "n_seeds": len(members),
                "seeds": [m["seed"] for m in members],
                "labels": None
                if labels[0] is None
                else {k: _uniform([lab[k] for lab in labels]) for k in LABEL_KEYS},
                "n_real": _uniform([m["n_real"] for m in members]),
                "n_synthetic": _uniform([m["n_synthetic"] for m in members]),
                "synthetic_sets": sorted(
                    {m["synthetic_set"] for m in members if m.get("synthetic_set")}
                ),
                "test_miou_mean": float(np.nanmean(test)),
                "test_miou_std": interval["std"],
                "test_miou_ci": interval["ci"],
                "select_miou_mean": float(np.mean(select)) if select else None,
            }
        )
    return summary


def compare_conditions(runs: list[dict]) -> list[dict]:
    """Per budget and condition other than real: the paired difference of test mIoU against
    real-only over the seeds both ran (same budget, same seed: same labels and init)."""
    by_key: dict[tuple, dict] = {}
    for run in runs:
        by_key.setdefault((run["condition"], run["budget"]), {})[run["seed"]] = run["test_miou"]
    comparisons = []
    budgets = sorted({b for _, b in by_key}, key=budget_order)
    for budget in budgets:
        real = by_key.get(("real", budget))
        for condition in CONDITIONS[1:]:
            other = by_key.get((condition, budget))
            if real is None or other is None or not set(real) & set(other):
                continue
            diff = paired_difference(other, real)
            comparisons.append({"budget": budget, "condition": condition, "versus": "real", **diff})
    return comparisons


def _labels_cell(labels: dict | None) -> str:
    if labels is None:
        return "?"
    return f"{labels['tiles']} / {labels['pixels']}"


def format_downstream_table(result: dict) -> str:
    """Markdown table: per condition and budget the labels touched, seeds, test mIoU mean +- std
    and the paired difference against real-only with its 95 % interval and verdict."""
    if "comparisons" not in result:
        return _format_older_table(result)
    diffs = {(c["condition"], c["budget"]): c for c in result["comparisons"]}
    lines = [
        "| condition | budget | labels touched (tiles / px) | seeds | test mIoU (mean +- std) | "
        "vs real: diff [95 % CI] |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in result["summary"]:
        std = "" if row["test_miou_std"] is None else f" +- {100 * row['test_miou_std']:.2f}"
        diff = diffs.get((row["condition"], row["budget"]))
        versus = "-" if diff is None else format_difference(diff)
        lines.append(
            f"| {row['condition']} | {row['budget']} | {_labels_cell(row['labels'])} | "
            f"{row['n_seeds']} | {100 * row['test_miou_mean']:.2f}{std} | {versus} |"
        )
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines)


def _format_older_table(result: dict) -> str:
    """The table of results written before label budgets (crop counts, val-split selection)."""
    lines = [
        "| condition | real crops | synthetic pairs | seeds | test mIoU (mean +- std) | val mIoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        std = "" if row["test_miou_std"] is None else f" +- {100 * row['test_miou_std']:.2f}"
        val = row.get("val_miou_mean", row.get("select_miou_mean"))
        lines.append(
            f"| {row['condition']} | {row['n_real']} | {row['n_synthetic']} | {row['n_seeds']} | "
            f"{100 * row['test_miou_mean']:.2f}{std} | "
            f"{'' if val is None else f'{100 * val:.2f}'} |"
        )
    lines += ["", OLDER_FORMAT_NOTE]
    return "\n".join(lines)


OLDER_FORMAT_NOTE = (
    "Older format (before label budgets): budgets were random real crops, the epoch was chosen "
    "on the whole validation split, and there are no paired intervals; rerun `pairforge eval "
    "downstream` for budget-honest figures."
)


def write_downstream(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write downstream.json, downstream.md and downstream.png into `out_dir`."""
    from pairforge.eval.downstream_plot import plot_downstream
    from pairforge.eval.result_files import write_result_files

    return write_result_files(
        result, out_dir, "downstream", format_downstream_table(result), plot_downstream
    )
