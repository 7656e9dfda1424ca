"""The factory comparison: baseline, head, distilled and distilled + synthetic segmenters at the
same label budgets and seeds, paired per seed, overall and per class.

Inputs are the result JSONs the factory's steps print (`seg baseline --json`, `seg eval --json`,
`seg distill --json`), one per (budget, seed) in RESULTS/<method>/<name>.json with method one of
baseline, head, distill, distill-synthetic. Results are paired by (budget, seed) only when they
read exactly the same labeled tiles (budget fingerprint) and were scored on the same number of
test tiles; otherwise the comparison stops naming both files. With the chain's folder
(`chain_root`) the rows also carry what the chain kept: the pseudo-labeled pixel fraction and
the kept fraction of generated pairs.
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

METHODS = (
    ("baseline", "supervised baseline (labels only)"),
    ("head", "diffusion-feature head"),
    ("distill", "head + distillation on pseudo-labels"),
    ("distill-synthetic", "+ filtered synthetic pairs"),
)
# (a, b): a - b is reported, in this order.
COMPARISONS = (
    ("head", "baseline"),
    ("distill", "baseline"),
    ("distill", "head"),
    ("distill-synthetic", "baseline"),
    ("distill-synthetic", "distill"),
)


def _read(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PairforgeError(f"{path}: unreadable ({err}); rerun the step that wrote it") from None
    labels = result.get("labels") if isinstance(result, dict) else None
    if not labels or "fingerprint" not in labels or "mean_iou" not in result:
        raise PairforgeError(
            f"{path}: no mean_iou or label budget; write it with `seg eval / baseline / distill "
            "--json` of this pairforge version"
        )
    return result


def _budget(labels: dict) -> str:
    return "all" if labels.get("budget") is None else str(labels["budget"])


def load_results(results_dir: str | Path) -> dict[str, dict[tuple[str, int], tuple[Path, dict]]]:
    """{method: {(budget, seed): (path, result)}} of every RESULTS/<method>/*.json."""
    root = Path(results_dir)
    if not root.is_dir():
        raise PairforgeError(f"{root}: not a folder; pass OUT/eval/results of `pairforge factory`")
    found: dict[str, dict[tuple[str, int], tuple[Path, dict]]] = {}
    for method, _ in METHODS:
        for path in sorted((root / method).glob("*.json")):
            if path.name.startswith("."):  # the chain's record of the command that wrote it
                continue
            result = _read(path)
            key = (_budget(result["labels"]), int(result["labels"]["seed"]))
            found.setdefault(method, {})[key] = (path, result)
    if "baseline" not in found:
        raise PairforgeError(
            f"{root}: no baseline/*.json; the comparison is against the supervised baseline "
            "(`pairforge factory` writes it first)"
        )
    return found


def _check_pair(a: tuple[Path, dict], b: tuple[Path, dict]) -> None:
    (pa, ra), (pb, rb) = a, b
    if ra["labels"]["fingerprint"] != rb["labels"]["fingerprint"]:
        raise PairforgeError(
            f"{pa} and {pb} read different labeled tiles (budget fingerprints "
            f"{ra['labels']['fingerprint']} vs {rb['labels']['fingerprint']}); run both steps "
            "with the same --labels, --label-seed and --label-tile"
        )
    if ra.get("num_images") != rb.get("num_images"):
        raise PairforgeError(
            f"{pa} was scored on {ra.get('num_images')} test tiles, {pb} on "
            f"{rb.get('num_images')}; score both on the same test split at the same scale"
        )


def _chain_info(root: Path | None, budget: str, seed: int) -> dict[str, Any]:
    """Kept fractions of the chain's pseudo-labels and filtered pairs, where present."""
    if root is None:
        return {}
    name, info = f"b{budget}-s{seed}", {}  # the factory's folder names (chain.tag)
    for key, path in (("pseudo", root / "pseudo" / name / "pseudolabel.json"),
                      ("filter", root / "synthetic" / f"{name}-filtered" / "filter.json")):  # fmt: skip
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record.get("filter"), dict):
            record = record["filter"]
        info[f"{key}_kept_fraction"] = record.get("kept_fraction")
    return info


def _by_seed(found, method: str, budget: str, key=lambda r: r["mean_iou"]) -> dict[int, float]:
    out = {}
    for (b, seed), (_, result) in found.get(method, {}).items():
        value = key(result)
        if b == budget and value is not None:
            out[seed] = float(value)
    return out


def _per_class(found, budget: str, names: list[str]) -> dict[str, Any]:
    table = {}
    for name in names:

        def iou(result, name=name):
            return result.get("per_class_iou", {}).get(name)

        scores = {m: _by_seed(found, m, budget, iou) for m, _ in METHODS}
        row: dict[str, Any] = {m: mean_ci(list(v.values())) for m, v in scores.items() if v}
        for a, b in COMPARISONS:
            if scores[a] and scores[b]:
                row[f"{a}_vs_{b}"] = paired_difference(scores[a], scores[b])
        table[name] = row
    return table


def compare_factory(results_dir: str | Path, chain_root: str | Path | None = None) -> dict:
    """The comparison (JSON-ready): per budget each method's test mIoU (mean, std, 95 % t
    interval over seeds), the paired differences of COMPARISONS, the same per class, the labels
    touched and the chain's kept fractions."""
    found = load_results(results_dir)
    root = None if chain_root is None else Path(chain_root)
    baseline = found["baseline"]
    for entries in found.values():
        for key, entry in entries.items():
            if key in baseline:
                _check_pair(entry, baseline[key])
    budgets = sorted(
        {b for b, _ in baseline}, key=lambda b: (b == "all", int(b) if b.isdigit() else 0)
    )
    first = next(iter(baseline.values()))[1]
    names = list(first.get("per_class_iou", {}))
    rows = []
    for budget in budgets:
        labels = next(r["labels"] for (b, _), (_, r) in baseline.items() if b == budget)
        scores = {m: _by_seed(found, m, budget) for m, _ in METHODS}
        row: dict[str, Any] = {
            "budget": budget,
            "tiles": labels["tiles"],
            "fit_tiles": labels.get("fit_tiles"),
            "select_tiles": labels.get("select_tiles"),
            "pixels": labels["pixels"],
            "seeds": sorted(scores["baseline"]),
        }
        row.update({m: mean_ci(list(v.values())) for m, v in scores.items() if v})
        for a, b in COMPARISONS:
            if scores[a] and scores[b]:
                row[f"{a}_vs_{b}"] = paired_difference(scores[a], scores[b])
        row["per_class"] = _per_class(found, budget, names)
        row["chain"] = {str(s): _chain_info(root, budget, s) for s in row["seeds"]}
        rows.append(row)
    return {
        "metric": "factory",
        "results": str(results_dir),
        "n_test_tiles": first.get("num_images"),
        "classes": names,
        "rows": rows,
        "notes": [
            "Every figure of a row touched exactly that row's labeled tiles (fit tiles to train, "
            "select tiles for thresholds and best epochs); the unlabeled training images were "
            "used without labels; the test split was only scored.",
            "Differences are paired per seed; 95 % Student-t intervals; an interval holding 0 is "
            "'no significant difference'.",
        ],
    }


_cell = format_mean_std


def _diff(row: dict, a: str, b: str) -> str:
    key = f"{a}_vs_{b}"
    return format_difference(row[key]) if key in row else "-"


FACTORY_HEADER = ["budget", "labels (tiles: fit + select)", "seeds",
                  *[label for _, label in METHODS],
                  *[f"{a} - {b} [95 % CI]" for a, b in COMPARISONS]]  # fmt: skip


def factory_rows(result: dict) -> list[list[str]]:
    """Overall rows as text cells, in FACTORY_HEADER order."""
    rows = []
    for row in result["rows"]:
        touched = f"{row['tiles']} ({row['fit_tiles']} + {row['select_tiles']})"
        rows.append([row["budget"], touched, str(len(row["seeds"])),
                     *[_cell(row.get(m)) for m, _ in METHODS],
                     *[_diff(row, a, b) for a, b in COMPARISONS]])  # fmt: skip
    return rows


CLASS_HEADER = ["budget", "class", *[m for m, _ in METHODS],
                "distill - baseline [95 % CI]", "distill-synthetic - distill [95 % CI]"]  # fmt: skip


def class_rows(result: dict) -> list[list[str]]:
    """Per-class rows (IoU per method and the two factory differences)."""
    rows = []
    for row in result["rows"]:
        for name, cls in row["per_class"].items():
            rows.append([row["budget"], name, *[_cell(cls.get(m)) for m, _ in METHODS],
                         _diff(cls, "distill", "baseline"),
                         _diff(cls, "distill-synthetic", "distill")])  # fmt: skip
    return rows


def chain_rows(result: dict) -> list[list[str]]:
    """Per (budget, seed): pseudo-labeled pixel fraction and kept fraction of generated pairs."""

    def fraction(value):
        return "-" if value is None else f"{value:.3f}"

    return [[row["budget"], seed, fraction(info.get("pseudo_kept_fraction")),
             fraction(info.get("filter_kept_fraction"))]
            for row in result["rows"] for seed, info in row["chain"].items()]  # fmt: skip


CHAIN_HEADER = ["budget", "seed", "pseudo-labeled pixel fraction", "kept pair fraction"]


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows]


def format_factory(result: dict) -> str:
    """Markdown: overall table, per-class table, the chain's kept fractions."""
    lines = _markdown(FACTORY_HEADER, factory_rows(result))
    lines += ["", "Test mIoU in % (mean +- std over seeds).", ""]
    lines += _markdown(CLASS_HEADER, class_rows(result))
    lines += ["", "Per-class test IoU in %.", ""]
    lines += _markdown(CHAIN_HEADER, chain_rows(result))
    return "\n".join(lines)


def plot_factory(result: dict, path: str | Path) -> Path:
    """Test mIoU per method vs label budget, 95 % interval of the mean as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairforge.eval.result_files import save_figure

    figure, axis = plt.subplots(figsize=(6.0, 3.8))
    rows = result["rows"]
    positions = list(range(len(rows)))
    for k, (method, label) in enumerate(METHODS):
        points = [
            (x, row[method]) for x, row in zip(positions, rows, strict=True) if row.get(method)
        ]
        if not points:
            continue
        means = [100 * s["mean"] for _, s in points]
        errors = [0.0 if s["ci"] is None else 100 * (s["ci"][1] - s["mean"]) for _, s in points]
        axis.errorbar([x + 0.08 * (k - 1.5) for x, _ in points], means, yerr=errors, marker="o",
                      capsize=3, label=label)  # fmt: skip
    axis.set_xticks(positions, [f"{row['budget']}\n({row['tiles']} tiles)" for row in rows])
    axis.set_xlim(-0.5, len(rows) - 0.5)
    axis.set_xlabel("label budget (labeled tiles, selection included)")
    axis.set_ylabel("test mIoU (%)")
    return save_figure(figure, axis, path)


def write_factory(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """factory.json, factory.md and factory.png in `out_dir`."""
    from pairforge.eval.result_files import write_result_files

    return write_result_files(result, out_dir, "factory", format_factory(result), plot_factory)
