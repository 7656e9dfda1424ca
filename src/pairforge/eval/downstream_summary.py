"""Downstream results: mean +- std over seeds per (condition, budget), the Markdown table, the
mIoU-vs-budget plot, and writing downstream.json / .md / .png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pairforge.eval.downstream_plan import CONDITIONS
from pairforge.io import atomic_write_text


def summarize_runs(runs: list[dict]) -> list[dict]:
    """Mean and sample std (ddof 1; None for one seed) of test mIoU per (condition, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["condition"], run["budget"]), []).append(run)
    order = {c: i for i, c in enumerate(CONDITIONS)}
    summary = []
    for (condition, budget), members in sorted(
        groups.items(), key=lambda item: (item[0][1] or 0, order[item[0][0]])
    ):
        test = np.array([m["test_miou"] for m in members], dtype=np.float64)
        val = np.array([m["best_val_miou"] for m in members], dtype=np.float64)
        summary.append(
            {
                "condition": condition,
                "budget": budget,
                "n_seeds": len(members),
                "n_real": members[0]["n_real"],
                "n_synthetic": members[0]["n_synthetic"],
                "test_miou_mean": float(np.nanmean(test)),
                "test_miou_std": float(np.nanstd(test, ddof=1)) if len(test) > 1 else None,
                "val_miou_mean": float(np.nanmean(val)),
            }
        )
    return summary


def format_downstream_table(result: dict) -> str:
    """Markdown table: test mIoU mean +- std per condition and budget."""
    lines = [
        "| condition | real crops | synthetic pairs | seeds | test mIoU (mean +- std) | val mIoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        std = "" if row["test_miou_std"] is None else f" +- {100 * row['test_miou_std']:.2f}"
        lines.append(
            f"| {row['condition']} | {row['n_real']} | {row['n_synthetic']} | {row['n_seeds']} | "
            f"{100 * row['test_miou_mean']:.2f}{std} | {100 * row['val_miou_mean']:.2f} |"
        )
    lines.append("")
    lines.append(
        "mIoU in %, on tiles of the held-out test measurements; epoch chosen on the validation "
        "split."
    )
    return "\n".join(lines)


def plot_downstream(result: dict, path: str | Path) -> Path:
    """Test mIoU vs label budget (log x), error bars = std over seeds; synthetic-only as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    summary = result["summary"]
    for condition, label in (("real", "real only"), ("mixed", "real + synthetic")):
        rows = sorted(
            (r for r in summary if r["condition"] == condition), key=lambda r: r["budget"]
        )
        if rows:
            axis.errorbar(
                [r["budget"] for r in rows],
                [100 * r["test_miou_mean"] for r in rows],
                yerr=[100 * (r["test_miou_std"] or 0.0) for r in rows],
                marker="o",
                capsize=3,
                label=label,
            )
    for row in (r for r in summary if r["condition"] == "synthetic"):
        mean, std = 100 * row["test_miou_mean"], 100 * (row["test_miou_std"] or 0.0)
        axis.axhline(
            mean, color="gray", linestyle="--", label=f"synthetic only ({row['n_synthetic']})"
        )
        axis.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
    axis.set_xscale("log")
    budgets = sorted({r["budget"] for r in summary if r["budget"] is not None})
    if budgets:
        axis.set_xticks(budgets, [str(b) for b in budgets])
        axis.minorticks_off()
    axis.set_xlabel("labeled real training crops")
    axis.set_ylabel("test mIoU (%)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_downstream(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write downstream.json, downstream.md and downstream.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "downstream.json",
        "table": out_dir / "downstream.md",
        "plot": out_dir / "downstream.png",
    }
    atomic_write_text(paths["json"], json.dumps(result, indent=2))
    atomic_write_text(paths["table"], format_downstream_table(result) + "\n")
    plot_downstream(result, paths["plot"])
    return paths
