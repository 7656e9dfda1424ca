"""HTML pieces the report's sections share: embedded PNGs, tables in scrollable boxes, the
"Missing: ... run X" notes and the page's style sheet."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

# The page fits a 1366 x 768 laptop screen without sideways scrolling: a max-width body, every
# table in its own horizontally scrollable box, images never wider than their box, long paths
# allowed to break anywhere.
STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 1.5em auto; padding: 0 1em;
       color: #222; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; overflow-wrap: normal; }
th:first-child, td:first-child { text-align: left; }
.scroll { max-width: 100%; overflow-x: auto; }
img { max-width: 100%; height: auto; margin: 0.4em 0; display: block; }
.missing { color: #a40; font-style: italic; }
.warning { color: #850; }
pre { background: #f6f6f6; padding: 0.5em; font-size: 0.8em; overflow-x: auto;
      white-space: pre-wrap; }
.summary { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1.5fr); gap: 0.8em;
           align-items: start; }
.summary > div { border: 1px solid #ccc; border-radius: 6px; padding: 0.3em 0.8em;
                 min-width: 0; background: #fafafa; }
.summary > .miou { grid-column: 2; grid-row: 1 / span 3; }
@media (max-width: 800px) {
  .summary { grid-template-columns: minmax(0, 1fr); }
  .summary > .miou { grid-column: auto; grid-row: auto; }
}
h1 { margin: 0.2em 0; }
.summary h3 { margin: 0.3em 0; font-size: 1em; }
.summary p { margin: 0.3em 0; }
.side-by-side { display: flex; flex-wrap: wrap; gap: 1.2em; }
.side-by-side figure { margin: 0; min-width: 0; }
.side-by-side figcaption { font-size: 0.85em; color: #444; }
.tiles { display: flex; flex-wrap: wrap; gap: 4px; }
.tiles img { margin: 0; image-rendering: pixelated; }
"""


def png_tag(data: bytes, alt: str, width: int | None = None, height: int | None = None) -> str:
    """<img> of PNG bytes, embedded as base64; width and height (CSS px) when given."""
    encoded = base64.b64encode(data).decode("ascii")
    size = ""
    if width and height:
        size = f' width="{width}" height="{height}"'
    elif width:
        size = f' style="max-width:{width}px"'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}"{size}>'


def png_file_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return missing(f"{path.name} not found in {path.parent}")
    return png_tag(path.read_bytes(), alt)


def missing(what: str) -> str:
    return f'<p class="missing">Missing: {html.escape(what)}</p>'


def table(header: list[str], rows: list[list]) -> str:
    """A table in its own horizontally scrollable box (wide tables never widen the page)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def records_table(columns, records: list[dict]) -> str:
    """One table row per record; columns: (header, key of the record or function of it)."""
    return table(
        [header for header, _ in columns],
        [[get(r) if callable(get) else r[get] for _, get in columns] for r in records],
    )


def settings_block(settings) -> str:
    text = (
        json.dumps(settings, indent=2, default=str) if not isinstance(settings, str) else settings
    )
    return f"<details><summary>settings</summary><pre>{html.escape(text)}</pre></details>"


def rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def read_manifest_settings(dataset: Path) -> str:
    """The settings block of a generated set's manifest.json (its sample list left out)."""
    from pairforge.eval.report_inputs import read_json

    manifest = read_json(dataset / "manifest.json")
    return settings_block({k: v for k, v in manifest.items() if k != "samples"})
