"""The sections of the HTML report (`eval.report`): the summary, sample grids, FID / KID, mask
statistics, few-label and downstream segmentation mIoU, wall time; each renders what `collect_results`
found, or says what is missing and which command makes it."""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path

from pairforge.eval.report_html import missing as _missing
from pairforge.eval.report_html import png_file_tag as _png_file_tag
from pairforge.eval.report_html import records_table as _records_table
from pairforge.eval.report_html import settings_block as _settings_block
from pairforge.eval.report_html import table as _table
from pairforge.eval.report_inputs import ReportInputs
from pairforge.eval.report_samples import samples_section as _samples_section
from pairforge.eval.report_summary import render_summary


def _per_folder(kind: str, missing: str, render, found: ReportInputs) -> str:
    """One block per eval folder holding a `kind` result (fid, mask_stats, downstream): its
    heading, `render(folder, result)`, then the result's settings; `missing` (what to run)
    when no folder holds one."""
    entries = getattr(found, kind)
    if not entries:
        return _missing(missing)
    return "".join(
        f"<h3>{html.escape(str(folder))}</h3>{render(folder, result)}"
        f"{_settings_block(result.get('settings', {}))}"
        for folder, result in entries
    )


def _fid_block(folder: Path, result: dict) -> str:
    from pairforge.eval.fid import MEAN_ROW_LABEL, row_label

    columns = (
        ("target", row_label),
        ("features", "features"),
        ("FID", "fid"),
        ("KID x1e3", lambda r: None if r["kid_mean"] is None else r["kid_mean"] * 1e3),
        ("KID std x1e3", lambda r: None if r.get("kid_std") is None else r["kid_std"] * 1e3),
        ("n real", "n_real"),
        ("n synthetic", "n_fake"),
    )
    table = _records_table(columns, result["rows"])
    real, fake = result.get("real", {}), result.get("fake", {})
    # Older results: the CLI's settings.real_split, None there meaning every sample.
    split = real.get("split") or result.get("settings", {}).get("real_split") or "all"
    counts = (
        f"<p>real reference: split {html.escape(str(split))} of "
        f"{html.escape(str(real.get('source')))} ({real.get('n_images')} images, "
        f"{real.get('n_masks')} masks); synthetic: {html.escape(str(fake.get('source')))} "
        f"({fake.get('n_images')} images, {fake.get('n_masks')} masks)</p>"
    )
    domain = (result.get("settings") or {}).get("domain")
    if domain:
        counts += (
            f"<p>domain features: run {html.escape(str(domain.get('run')))} (task "
            f"{html.escape(str(domain.get('task')))}), {html.escape(str(domain.get('block')))}"
            f" at t={domain.get('timestep')}</p>"
        )
    if any(row_label(r) == MEAN_ROW_LABEL for r in result["rows"]):
        counts += (
            f"<p>The row &ldquo;{html.escape(MEAN_ROW_LABEL)}&rdquo; is a plain mean of the "
            "per-target FIDs, which compare different inputs (each channel, the masks).</p>"
        )
    warnings = "".join(
        f'<p class="warning">{html.escape(w)}</p>' for w in result.get("warnings", [])
    )
    return f"{counts}{table}{warnings}"


MASK_CLASS_COLUMNS = (
    ("class", "class"),
    ("fraction real", "fraction_real"),
    ("fraction synthetic", "fraction_fake"),
    ("components/mask real", "components_per_mask_real"),
    ("components/mask synthetic", "components_per_mask_fake"),
    ("mean size real (px)", lambda c: (c["component_size_real"] or {}).get("mean")),
    ("mean size synthetic (px)", lambda c: (c["component_size_fake"] or {}).get("mean")),
    ("size W1 (px)", "size_wasserstein"),
)


def _mask_stats_block(folder: Path, result: dict) -> str:
    table = _records_table(MASK_CLASS_COLUMNS, result["classes"])
    value_rows = [
        [ch["channel"], e["class"], e["mean_real"], e["mean_fake"], e["wasserstein"]]
        for ch in result["channels"]
        for e in ch["per_class"]
    ]
    values = _table(["channel", "class", "mean real", "mean synthetic", "value W1"], value_rows)
    plots = "".join(
        _png_file_tag(folder / f"mask_stats_{name}.png", f"mask statistics {name}")
        for name in ("fractions", "sizes", "values")
    )
    counts = (
        f"<p>{result['real']['n_masks']} real masks ({html.escape(result['real']['source'])}), "
        f"{result['fake']['n_masks']} synthetic masks ({html.escape(result['fake']['source'])})</p>"
    )
    return f"{counts}{table}{values}{plots}"


OLDER_DOWNSTREAM_COLUMNS = (
    ("condition", "condition"),
    ("real crops", "n_real"),
    ("synthetic pairs", "n_synthetic"),
    ("seeds", "n_seeds"),
    ("test mIoU %", lambda r: 100 * r["test_miou_mean"]),
    ("std %", lambda r: None if r["test_miou_std"] is None else 100 * r["test_miou_std"]),
    ("val mIoU %", lambda r: 100 * r["val_miou_mean"] if "val_miou_mean" in r else None),
)


def _downstream_columns(result: dict) -> tuple:
    """Columns of a budget-honest result: labels touched and the paired difference vs real."""
    from pairforge.core.stats import format_difference

    diffs = {(c["condition"], c["budget"]): c for c in result.get("comparisons", [])}

    def versus(row):
        diff = diffs.get((row["condition"], row["budget"]))
        return "-" if diff is None else format_difference(diff)

    def labels(row):
        lab = row.get("labels") or {}
        return f"{lab.get('tiles')} / {lab.get('pixels')}"

    return (
        ("condition", "condition"),
        ("budget", "budget"),
        ("labels touched (tiles / px)", labels),
        ("seeds", "n_seeds"),
        ("test mIoU %", lambda r: 100 * r["test_miou_mean"]),
        ("std %", lambda r: None if r["test_miou_std"] is None else 100 * r["test_miou_std"]),
        ("vs real: diff [95 % CI]", versus),
    )


def _downstream_block(folder: Path, result: dict) -> str:
    data = result.get("data", {})
    about = (
        f"<p>test: {data.get('n_test_tiles')} tiles of "
        f"{html.escape(', '.join(data.get('test_measurements', [])))}; "
        f"model selection: {html.escape(str(data.get('model_selection')))}</p>"
    )
    if "comparisons" in result:  # label budgets, paired intervals
        table = _records_table(_downstream_columns(result), result["summary"])
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in result.get("notes", []))
    else:  # written before label budgets: crop counts, val-split selection, std only
        from pairforge.eval.downstream_summary import OLDER_FORMAT_NOTE

        table = _records_table(OLDER_DOWNSTREAM_COLUMNS, result["summary"])
        notes = "".join(
            f'<p class="warning">{html.escape(n)}</p>'
            for n in [OLDER_FORMAT_NOTE, *result.get("notes", [])]
        )
    plot = _png_file_tag(folder / "downstream.png", "downstream mIoU vs label budget")
    return f"{about}{table}{notes}{plot}"


def _segmentation_section(found: ReportInputs) -> str:
    if not found.segmentation:
        return _missing(
            "no seg_*.json found; save `pairforge seg eval HEAD --data DIR --json` (and "
            "`pairforge seg baseline ... --json`) as EVAL/seg_head.json / seg_baseline.json"
        )
    names = {"seg_head": "diffusion-feature head", "seg_baseline": "supervised baseline"}
    classes = sorted({c for _, r in found.segmentation for c in r.get("per_class_iou", {})})
    rows = []
    for path, result in found.segmentation:
        per_class, labels = result.get("per_class_iou", {}), result.get("labels") or {}
        kind, _, tag = path.stem.partition("-")  # seg_head-b8-s0: a head of budget 8, seed 0
        name = names.get(kind, kind) + (f" ({tag})" if tag else "")
        read = f"{labels['tiles']} / {labels['pixels']:,}" if "tiles" in labels else "unknown"
        rows.append(
            [name, result.get("split"), result.get("num_images"), read, 100 * result["mean_iou"]]
            + [None if per_class.get(c) is None else 100 * per_class[c] for c in classes]
        )  # fmt: skip
    note = (
        "<p>mIoU in % on tiles of the held-out split. Labels read: the tiles (and full-resolution "
        "pixels) of the model's label budget, its selection tiles included; nothing else.</p>"
    )
    header = ["model", "split", "tiles", "labels read (tiles / px)", "mIoU"]
    return _table(header + [f"IoU {c}" for c in classes], rows) + note


def _few_label_block(folder: Path, result: dict) -> str:
    from pairforge.eval.few_label import FEW_LABEL_HEADER, few_label_rows

    notes = "".join(f"<p>{html.escape(n)}</p>" for n in result.get("notes", []))
    plot = _png_file_tag(folder / "few_label.png", "few-label mIoU vs label budget")
    return _table(FEW_LABEL_HEADER, few_label_rows(result)) + notes + plot


def _factory_block(folder: Path, result: dict) -> str:
    import pairforge.eval.factory_compare as fc

    notes = "".join(f"<p>{html.escape(n)}</p>" for n in result.get("notes", []))
    plot = _png_file_tag(folder / "factory.png", "factory mIoU per method vs label budget")
    return (_table(fc.FACTORY_HEADER, fc.factory_rows(result)) + notes + plot
            + "<h4>Per class (IoU %)</h4>" + _table(fc.CLASS_HEADER, fc.class_rows(result))
            + "<h4>What the chain kept</h4>" + _table(fc.CHAIN_HEADER, fc.chain_rows(result)))  # fmt: skip


def _timing_section(found: ReportInputs) -> str:
    if not found.timings:
        return _missing("no demo.json or factory_run.json found (`pairforge demo` / `factory`)")
    parts = []
    for folder, result in found.timings:
        rows = [[stage, seconds] for stage, seconds in result.get("seconds", {}).items()]
        rows.append(["total (before the report)", result.get("total_seconds")])
        parts.append(f"<h3>{html.escape(str(folder))}</h3>" + _table(["stage", "seconds"], rows))
    return "".join(parts)


_fid_section = partial(
    _per_folder,
    "fid",
    "no fid.json found; run `pairforge eval fid REAL_DIR FAKE_DIR --out EVAL_DIR`",
    _fid_block,
)
_mask_stats_section = partial(
    _per_folder,
    "mask_stats",
    "no mask_stats.json found; run `pairforge eval stats REAL_DIR FAKE_DIR --out EVAL_DIR`",
    _mask_stats_block,
)
_downstream_section = partial(
    _per_folder,
    "downstream",
    "no downstream.json found; run `pairforge eval downstream REAL_DIR SYNTHETIC_DIR "
    "--out EVAL_DIR`",
    _downstream_block,
)

_few_label_section = partial(
    _per_folder,
    "few_label",
    "no few_label.json found; run `pairforge eval few-label DOWNSTREAM_JSON HEAD_JSON... --out "
    "EVAL_DIR`",
    _few_label_block,
)

_factory_section = partial(
    _per_folder,
    "factory",
    "no factory.json found; run `pairforge factory` (or `pairforge eval factory RESULTS --out "
    "EVAL_DIR`)",
    _factory_block,
)

# (anchor, heading, render(found) -> HTML), in page order.
SECTIONS = (
    ("summary", "At a glance", render_summary),
    ("samples", "Samples and overlays", _samples_section),
    ("fid", "FID / KID", _fid_section),
    ("mask-stats", "Mask statistics", _mask_stats_section),
    ("factory", "The factory: baseline, head, distilled, + synthetic", _factory_section),
    ("few-label", "Few labels: head and real + synthetic vs the baseline", _few_label_section),
    ("segmentation", "Segmentation with few labels (mIoU)", _segmentation_section),
    ("downstream", "Downstream segmentation (mIoU)", _downstream_section),
    ("timing", "Wall time", _timing_section),
)
