"""What every bench script does at the end: print its table and write --json / --markdown."""

from __future__ import annotations

import json
from pathlib import Path


def write_outputs(result: dict, text: str, json_path: Path | None, markdown_path: Path | None):
    """Print `text`; write `result` as JSON and `text` as markdown where paths are given."""
    print(text)
    for path, content in ((json_path, None), (markdown_path, text)):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(result, indent=2, default=str) + "\n" if content is None else content
        )
