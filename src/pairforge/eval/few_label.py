"""The few-label comparison: the diffusion-feature head and real + synthetic training against the
supervised baseline, at the same label budgets and seeds, paired per seed.

Inputs are results that already exist: a `pairforge eval downstream` result (its real-only runs
are the baseline, its mixed runs real + synthetic) and `pairforge seg eval --json` results of
heads fitted at the same budgets. A pair is only formed when both read exactly the same labeled
tiles (the budget fingerprint) and were scored on the same number of test tiles; otherwise the
comparison stops naming both files. Every row states the labels its figures touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pairforge.core.stats import (
    format_difference,
    format_mean_std,
    mean_ci,
    paired_difference,
)
from pairforge.errors import PairforgeError

METHODS = (("baseline", "supervised baseline (real only)"), ("head", "diffusion-feature head"),
           ("mixed", "real + synthetic"))  # fmt: skip


def _budget_label(labels: dict | None, fallback: Any) -> str:
    if labels and labels.get("budget") is not None:
        return str(labels["budget"])
    return "all" if fallback is None else str(fallback)


def _downstream_scores(result: dict, where: str) -> dict[tuple[str, str], dict[int, dict]]:
    """{(condition, budget): {seed: run}} of a downstream result's real and mixed runs."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for run in result.get("runs", []):
        labels = run.get("labels")
        if run["condition"] not in ("real", "mixed"):
            continue
        if not labels or "fingerprint" not in labels:
            raise PairforgeError(
                f"{where}: downstream run {run['condition']} budget {run.get('budget')} seed "
                f"{run['seed']} records no label budget (an older downstream.json); rerun "
                "`pairforge eval downstream` with --budgets"
            )
        key = (run["condition"], _budget_label(labels, run.get("budget")))
        out.setdefault(key, {})[int(run["seed"])] = run
    return out


def compare_few_label(
    downstream: dict, downstream_path: str | Path, heads: list[tuple[str | Path, dict]]
) -> dict[str, Any]:
    """The comparison table (JSON-ready): one row per budget with each method's mean, std and
    95 % t interval over seeds and the paired differences head - baseline, mixed - baseline."""
    scores = _downstream_scores(downstream, str(downstream_path))
    n_test = downstream.get("data", {}).get("n_test_tiles")
    head_scores: dict[str, dict[int, float]] = {}
    for path, head in heads:
        labels = head.get("labels")
        if not labels or "fingerprint" not in labels:
            raise PairforgeError(
                f"{path}: records no label budget (a head fitted by an older pairforge); refit "
                "it with `pairforge seg fit --labels N` and evaluate it with `seg eval --json`"
            )
        budget, seed = _budget_label(labels, None), int(labels["seed"])
        real = scores.get(("real", budget), {}).get(seed)
        if real is None:
            raise PairforgeError(
                f"{path}: head at budget {budget} seed {seed} has no baseline run in "
                f"{downstream_path}; run the downstream experiment at that budget and seed"
            )
        if real["labels"]["fingerprint"] != labels["fingerprint"]:
            raise PairforgeError(
                f"{path} and the baseline run of budget {budget} seed {seed} in {downstream_path} "
                "read different labeled tiles (budget fingerprints "
                f"{labels['fingerprint']} vs {real['labels']['fingerprint']}); use the same "
                "--labels, --label-seed and --label-tile for both"
            )
        if n_test is not None and head.get("num_images") != n_test:
            raise PairforgeError(
                f"{path}: scored on {head.get('num_images')} test tiles, the downstream "
                f"experiment on {n_test}; evaluate both on the same test split and tile scale"
            )
        head_scores.setdefault(budget, {})[seed] = float(head["mean_iou"])
    budgets = sorted(
        {b for (c, b) in scores if c == "real"},
        key=lambda b: (b == "all", int(b) if b.isdigit() else 0),
    )
    rows = []
    for budget in budgets:
        baseline = {s: r["test_miou"] for s, r in scores[("real", budget)].items()}
        first = next(iter(scores[("real", budget)].values()))["labels"]
        row: dict[str, Any] = {
            "budget": budget,
            "tiles": first["tiles"],
            "fit_tiles": first.get("fit_tiles"),
            "select_tiles": first.get("select_tiles"),
            "pixels": first["pixels"],
            "seeds": sorted(baseline),
            "baseline": mean_ci(list(baseline.values())),
        }
        for method, by_seed in (
            ("head", head_scores.get(budget)),
            ("mixed", {s: r["test_miou"] for s, r in scores.get(("mixed", budget), {}).items()}),
        ):
            if by_seed:
                row[method] = mean_ci([by_seed[s] for s in sorted(by_seed)])
                row[f"{method}_vs_baseline"] = paired_difference(by_seed, baseline)
        rows.append(row)
    return {
        "metric": "few_label",
        "downstream": str(downstream_path),
        "heads": [str(p) for p, _ in heads],
        "n_test_tiles": n_test,
        "rows": rows,
        "notes": [
            "Every figure of a row touched exactly that row's labeled tiles (fit + select); the "
            "head reads features of an image-only DDPM (no mask), the mixed runs' generators "
            "were trained on the same budget and seed.",
            "Differences are paired per seed (same tiles, same selection tiles, same seed); 95 % "
            "Student-t intervals; an interval holding 0 is 'no significant difference'.",
        ],
    }


_cell = format_mean_std


FEW_LABEL_HEADER = [
    "budget", "labels touched (tiles: fit + select / px)", "seeds", "baseline", "head",
    "head - baseline [95 % CI]", "real + synthetic", "mixed - baseline [95 % CI]",
]  # fmt: skip


def few_label_rows(result: dict) -> list[list[str]]:
    """The comparison's rows as text cells, in FEW_LABEL_HEADER order (Markdown and HTML)."""
    rows = []
    for row in result["rows"]:
        touched = f"{row['tiles']} ({row['fit_tiles']} + {row['select_tiles']}) / {row['pixels']:,}"
        rows.append(
            [row["budget"], touched, str(len(row["seeds"])), _cell(row["baseline"]),
             _cell(row.get("head")), _difference(row, "head_vs_baseline"),
             _cell(row.get("mixed")), _difference(row, "mixed_vs_baseline")]
        )  # fmt: skip
    return rows


def _difference(row: dict, key: str) -> str:
    return format_difference(row[key]) if key in row else "-"


def format_few_label_table(result: dict) -> str:
    """Markdown: per budget the labels touched, each method's test mIoU and the paired
    differences against the baseline."""
    lines = ["| " + " | ".join(FEW_LABEL_HEADER) + " |", "|---|---|---:|---:|---:|---|---:|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in few_label_rows(result)]
    lines += ["", "Test mIoU in % (mean +- std over seeds) on the held-out test measurements."]
    return "\n".join(lines)


def plot_few_label(result: dict, path: str | Path) -> Path:
    """Test mIoU vs label budget for the three methods, 95 % interval of the mean as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    rows = result["rows"]
    xs = [row["tiles"] for row in rows]
    for offset, (method, label) in zip((-0.04, 0.0, 0.04), METHODS, strict=True):
        points = [(x, row[method]) for x, row in zip(xs, rows, strict=True) if row.get(method)]
        if not points:
            continue
        means = [100 * s["mean"] for _, s in points]
        errors = [0.0 if s["ci"] is None else 100 * (s["ci"][1] - s["mean"]) for _, s in points]
        axis.errorbar([x * (1 + offset) for x, _ in points], means, yerr=errors, marker="o",
                      capsize=3, label=label)  # fmt: skip
    axis.set_xscale("log")
    axis.set_xticks(xs, [f"{row['budget']}\n({row['tiles']})" for row in rows])
    axis.minorticks_off()
    axis.set_xlabel("label budget (labeled tiles, selection included)")
    axis.set_ylabel("test mIoU (%)")
    from pairforge.eval.result_files import save_figure

    return save_figure(figure, axis, path)


def write_few_label(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """few_label.json, few_label.md and few_label.png in `out_dir`."""
    from pairforge.eval.result_files import write_result_files

    return write_result_files(
        result, out_dir, "few_label", format_few_label_table(result), plot_few_label
    )


def read_result(path: str | Path, what: str) -> dict:
    """A JSON result file; PairforgeError naming the file when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PairforgeError(f"{path}: {what} not found") from None
    except (OSError, json.JSONDecodeError) as err:
        raise PairforgeError(f"{path}: cannot read the {what} ({err}); rewrite it") from None
