"""One self-contained HTML report from what the train / generate / eval commands wrote.

Results layout it reads (each path given may be any of these, or a folder holding them up to
three levels down):
    EVAL/fid.json            `pairforge eval fid ... --out EVAL` (table rows, counts, settings)
    EVAL/mask_stats.json     `pairforge eval stats ... --out EVAL`, with mask_stats_*.png
    EVAL/downstream.json     `pairforge eval downstream ... --out EVAL`, with downstream.png
    EVAL/seg_<name>.json     `pairforge seg eval|baseline ... --json` output (mean_iou, per class)
    OUT/demo.json            `pairforge demo` stage timings
    RUN/model/pairforge.json a training run (RUN/config.yaml, RUN/samples/step-*.png)
    DATA/dataset.yaml        a dataset, e.g. generated pairs (DATA/manifest.json, grid.png)
Datasets named in the eval JSON files ("real", "fake", "synthetic" sources) are shown too when
they still exist. A section with nothing to show says what is missing and which command makes
it; nothing is dropped silently. Images are embedded as base64 PNG.
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path

from pairforge.eval.report_inputs import collect_results
from pairforge.eval.report_sections import SECTIONS
from pairforge.io import atomic_write_text

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; margin: 0.4em 0; display: block; }
.missing { color: #a40; font-style: italic; }
.warning { color: #850; }
pre { background: #f6f6f6; padding: 0.5em; font-size: 0.8em; overflow-x: auto; }
"""


def build_report(paths: list[str | Path], out: str | Path, title: str = "pairforge report") -> Path:
    """Write one self-contained HTML page for the results under `paths`; returns its path.

    Sections, always in this order and always present: samples and overlays, FID / KID, mask
    statistics, few-label segmentation mIoU, downstream mIoU, wall time. A section without
    results says so.
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
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>written {stamp} from {html.escape(', '.join(inputs))}</p>"
        + "".join(body)
        + "</body></html>"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
