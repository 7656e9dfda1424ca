"""The report's opening summary: labels used, test mIoU per method with 95 % intervals and the
paired verdicts, FID per channel and mask of each pipeline, the chain's wall time; each item
links to its section, and a missing input names the command that makes it."""

from __future__ import annotations

import html
import json
from pathlib import Path

from pairforge.eval.report_html import missing, table
from pairforge.eval.report_inputs import ReportInputs


def _link(anchor: str, text: str) -> str:
    return f'<a href="#{anchor}">{html.escape(text)}</a>'


def _seeds(seeds) -> str:
    return ", ".join(str(s) for s in seeds)


def _budget_line(row: dict) -> str:
    pixels = row.get("pixels")
    px = f", {pixels:,} px" if isinstance(pixels, int) else ""
    return (
        f"budget {row['budget']}: {row['tiles']} labeled tiles ({row.get('fit_tiles')} fit + "
        f"{row.get('select_tiles')} select){px}, seeds {_seeds(row.get('seeds', []))}"
    )


def _seg_groups(found: ReportInputs) -> dict[tuple[str, str], list[tuple[Path, dict]]]:
    """seg_*.json results by (kind, budget): seg_head-b8-s0.json is kind seg_head."""
    groups: dict[tuple[str, str], list[tuple[Path, dict]]] = {}
    for path, result in found.segmentation:
        labels = result.get("labels") or {}
        budget = "unknown" if not labels else str(labels.get("budget") or "all")
        groups.setdefault((path.stem.partition("-")[0], budget), []).append((path, result))
    return groups


def labels_item(found: ReportInputs) -> tuple[str, str]:
    """(anchor, HTML): the label budgets the results read, from the most complete result."""
    for kind, anchor in (("factory", "factory"), ("few_label", "few-label")):
        rows = [row for _, result in getattr(found, kind) for row in result.get("rows", [])]
        if rows:
            lines = "".join(f"<li>{html.escape(_budget_line(r))}</li>" for r in rows)
            return anchor, f"<ul>{lines}</ul><p>from {kind}.json; nothing else was read.</p>"
    budgets: dict[tuple, list] = {}
    for _, result in found.segmentation:
        lab = result.get("labels") or {}
        if "tiles" in lab:
            key = (str(lab.get("budget") or "all"), lab["tiles"], lab.get("fit_tiles"),
                   lab.get("select_tiles"), lab.get("pixels"))  # fmt: skip
            budgets.setdefault(key, []).append(lab.get("seed"))
    if budgets:
        lines = "".join(
            "<li>" + html.escape(_budget_line({"budget": b, "tiles": t, "fit_tiles": f,
                                               "select_tiles": s, "pixels": p,
                                               "seeds": sorted(set(seeds), key=str)})) + "</li>"
            for (b, t, f, s, p), seeds in budgets.items()
        )  # fmt: skip
        return "segmentation", f"<ul>{lines}</ul><p>from the seg_*.json results.</p>"
    return "segmentation", missing(
        "no result records its label budget; run `pairforge factory --labels N` (or `pairforge "
        "seg fit --labels N` and save `pairforge seg eval HEAD --json` as EVAL/seg_head.json)"
    )


def _interval(stat: dict | None) -> str:
    """ "71.0 [68.5, 73.5]" (test mIoU % and its 95 % t interval), "71.0 (one seed)", "-"."""
    if not stat:
        return "-"
    if stat.get("ci") is None:
        return f"{100 * stat['mean']:.1f} (one seed)"
    low, high = stat["ci"]
    return f"{100 * stat['mean']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _method_tables(rows: list[dict], methods, comparisons) -> str:
    """Methods x budgets (test mIoU % [95 % CI]), then comparisons x budgets (verdicts)."""
    from pairforge.core.stats import format_difference

    budgets = [f"budget {r['budget']} ({r['tiles']} tiles)" for r in rows]
    scores = [[label, *[_interval(r.get(m)) for r in rows]] for m, label in methods
              if any(r.get(m) for r in rows)]  # fmt: skip
    verdicts = []
    for a, b in comparisons:
        key = f"{a}_vs_{b}"
        if any(key in r for r in rows):
            verdicts.append([f"{a} - {b}", *[format_difference(r[key]) if key in r else "-"
                                              for r in rows]])  # fmt: skip
    out = table(["test mIoU % [95 % CI]", *budgets], scores)
    if verdicts:
        out += table(["paired difference [95 % CI]", *budgets], verdicts)
    return out


def miou_item(found: ReportInputs) -> tuple[str, str]:
    """(anchor, HTML): test mIoU per method with intervals and verdicts (factory.json, else
    few_label.json, else the seg_*.json results)."""
    if found.factory:
        import pairforge.eval.factory_compare as fc

        body = "".join(_method_tables(r.get("rows", []), fc.METHODS, fc.COMPARISONS)
                       for _, r in found.factory)  # fmt: skip
        return "factory", body
    if found.few_label:
        import pairforge.eval.few_label as fl

        comparisons = (("head", "baseline"), ("mixed", "baseline"))
        body = "".join(_method_tables(r.get("rows", []), fl.METHODS, comparisons)
                       for _, r in found.few_label)  # fmt: skip
        return "few-label", body
    if found.segmentation:
        from pairforge.core.stats import mean_ci

        names = {"seg_head": "diffusion-feature head", "seg_baseline": "supervised baseline"}
        rows = [[names.get(kind, kind), budget, len(entries),
                 _interval(mean_ci([float(r["mean_iou"]) for _, r in entries]))]
                for (kind, budget), entries in _seg_groups(found).items()]  # fmt: skip
        note = "<p>No paired comparison: run `pairforge factory` or `pairforge eval few-label`.</p>"
        return "segmentation", table(["model", "budget", "results", "test mIoU %"], rows) + note
    return "factory", missing(
        "no factory.json, few_label.json or seg_*.json found; run `pairforge factory` (or "
        "`pairforge eval few-label DOWNSTREAM_JSON HEAD_JSON... --out EVAL_DIR`)"
    )


def _pipeline_name(result: dict) -> str:
    """The generated set's pipeline (its manifest.json), else its folder name."""
    source = (result.get("fake") or {}).get("source")
    if not source:
        return "synthetic"
    try:
        manifest = json.loads((Path(source) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    pipeline = manifest.get("pipeline") if isinstance(manifest, dict) else None
    return f"{pipeline} ({Path(source).name})" if pipeline else Path(source).name


def fid_item(found: ReportInputs) -> tuple[str, str]:
    """(anchor, HTML): FID per channel and mask (columns) of each generated set (rows)."""
    if not found.fid:
        return "fid", missing("no fid.json found; run `pairforge eval fid REAL_DIR FAKE_DIR "
                              "--out EVAL_DIR`")  # fmt: skip
    targets: list[str] = []
    values = []
    for _, result in found.fid:
        # Channel, mask (and domain) rows only: the plain mean of the targets is not a metric.
        rows = {str(r["target"]): r.get("fid") for r in result.get("rows", [])
                if r.get("kind") in ("channel", "mask", "domain")}  # fmt: skip
        targets += [t for t in rows if t not in targets]
        values.append((_pipeline_name(result), rows))
    body = [[name, *["-" if rows.get(t) is None else f"{float(rows[t]):.1f}" for t in targets]]
            for name, rows in values]  # fmt: skip
    return "fid", table(["FID (lower is closer)", *targets], body)


def time_item(found: ReportInputs) -> tuple[str, str]:
    """(anchor, HTML): total wall time of `pairforge demo` / `factory` runs found."""
    if not found.timings:
        return "timing", missing("no demo.json or factory_run.json found; run `pairforge demo` "
                                 "or `pairforge factory`")  # fmt: skip
    lines = []
    for folder, result in found.timings:
        chain = "factory" if "stopped_before" in result else "demo"
        total = result.get("total_seconds")
        stages = len(result.get("seconds", {}))
        text = (f"{chain} ({folder.name}): no total recorded" if total is None
                else f"{chain} ({folder.name}): {total:.0f} s ({total / 60:.1f} min), "
                     f"{stages} stages")  # fmt: skip
        if result.get("stopped_before"):
            text += f"; stopped before '{result['stopped_before']}' (time limit)"
        lines.append(f"<li>{html.escape(text)}</li>")
    return "timing", f"<ul>{''.join(lines)}</ul>"


# (title, item, CSS class): the mIoU box takes the wider right column, the others stack left.
ITEMS = (("Labels used", labels_item, "labels"), ("Test mIoU per method", miou_item, "miou"),
         ("FID per channel and mask", fid_item, "fid"),
         ("The chain's wall time", time_item, "time"))  # fmt: skip


def render_summary(found: ReportInputs) -> str:
    """The summary boxes, each titled by a link to its section."""
    boxes = []
    for title, item, css in ITEMS:
        anchor, body = item(found)
        boxes.append(f'<div class="{css}"><h3>{_link(anchor, title)}</h3>{body}</div>')
    return f'<div class="summary">{"".join(boxes)}</div>'
