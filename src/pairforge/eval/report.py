"""One self-contained HTML report from what the train / generate / eval commands wrote.

Results layout it reads (each path given may be any of these, or a folder holding them up to
three levels down):
    EVAL/fid.json            `pairforge eval fid ... --out EVAL` (table rows, counts, settings)
    EVAL/mask_stats.json     `pairforge eval stats ... --out EVAL`, with mask_stats_*.png
    EVAL/downstream.json     `pairforge eval downstream ... --out EVAL`, with downstream.png
    EVAL/few_label.json      `pairforge eval few-label` (head, real + synthetic vs the baseline)
    EVAL/factory.json        `pairforge eval factory` / `pairforge factory` (every method, paired)
    EVAL/seg_<name>.json     `pairforge seg eval|baseline ... --json` output (mean_iou, per class)
    OUT/demo.json            `pairforge demo` stage timings (OUT/factory_run.json: `factory`)
    RUN/model/pairforge.json a training run (RUN/config.yaml, RUN/samples/step-*.png)
    DATA/dataset.yaml        a dataset, e.g. generated pairs (DATA/manifest.json, grid.png)
Datasets named in the eval JSON files ("real", "fake", "synthetic" sources) are shown too when
they still exist. A section with nothing to show says what is missing and which command makes
it; nothing is dropped silently. Images are embedded as base64 PNG. The page opens with a
summary (eval.report_summary) and fits a 1366 px wide screen (docs/images/report-summary.png).
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path

from pairforge.eval.report_html import STYLE
from pairforge.eval.report_inputs import collect_results
from pairforge.eval.report_sections import SECTIONS
from pairforge.io import atomic_write_text


def build_report(paths: list[str | Path], out: str | Path, title: str = "pairforge report") -> Path:
    """Write one self-contained HTML page for the results under `paths`; returns its path.

    Sections, always in this order and always present: the summary (labels used, test mIoU
    with intervals and verdicts, FID per channel, the chain's time; each linking to its
    section), samples (real beside synthetic at one scale), FID / KID, mask statistics, the
    factory, few-label and downstream mIoU, wall time. A section without results says so. The
    page fits a 1366 px wide screen: wide tables scroll inside their own box.
    """
    found = collect_results(paths)
    body = []
    for anchor, heading, render in SECTIONS:
        body.append(
            f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{render(found)}</section>'
        )
    inputs = [str(Path(p)) for p in paths]
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>written {stamp} from {html.escape(', '.join(inputs))}</p>"
        + "".join(body)
        + "</body></html>"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
