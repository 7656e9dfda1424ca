"""The downstream plot: test mIoU vs label budget per condition, with 95 % intervals over seeds
('all' placed at its tile count); results of the older format keep their crop-count axis."""

from __future__ import annotations

from pathlib import Path

LABELS = {"real": "real only", "synthetic": "synthetic only", "mixed": "real + synthetic"}


def _x(row: dict) -> float:
    """Budget position: its labeled tiles ('all': every tile of the split); older rows: the
    crop count."""
    labels = row.get("labels")
    if labels and isinstance(labels.get("tiles"), int):
        return float(labels["tiles"])
    return float(row["budget"])


def _half_width(row: dict) -> float:
    if "test_miou_ci" not in row:  # an older result: std only
        return 100 * (row.get("test_miou_std") or 0.0)
    ci = row["test_miou_ci"]
    return 0.0 if ci is None else 100 * (ci[1] - ci[0]) / 2  # None: one seed, no interval


def plot_downstream(result: dict, path: str | Path) -> Path:
    """Test mIoU (%) vs labeled tiles (log x) per condition; error bars: the 95 % t interval
    of the mean over seeds (older results: the std; their synthetic-only runs as a band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    summary = result["summary"]
    ticks: dict[float, str] = {}
    for index, (condition, label) in enumerate(LABELS.items()):
        dodge = 1.0 + 0.04 * (index - 1)  # conditions side by side (log x), intervals readable
        rows = sorted(
            (r for r in summary if r["condition"] == condition and r["budget"] is not None),
            key=_x,
        )
        if not rows:
            continue
        axis.errorbar(
            [_x(r) * dodge for r in rows],
            [100 * r["test_miou_mean"] for r in rows],
            yerr=[_half_width(r) for r in rows],
            marker="o",
            capsize=3,
            label=label,
        )
        for row in rows:
            name = str(row["budget"])
            ticks[_x(row)] = f"all ({int(_x(row))})" if name == "all" else name
    for row in (r for r in summary if r["condition"] == "synthetic" and r["budget"] is None):
        mean, std = 100 * row["test_miou_mean"], 100 * (row["test_miou_std"] or 0.0)
        axis.axhline(
            mean, color="gray", linestyle="--", label=f"synthetic only ({row['n_synthetic']})"
        )
        axis.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
    axis.set_xscale("log")
    if ticks:
        axis.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
        axis.minorticks_off()
    new_format = "comparisons" in result
    axis.set_xlabel("labeled real tiles (budget)" if new_format else "labeled real training crops")
    axis.set_ylabel("test mIoU (%)" + (": mean, 95 % CI" if new_format else ""))
    from pairforge.eval.result_files import save_figure

    return save_figure(figure, axis, path)
