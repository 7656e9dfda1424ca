"""Writing an eval result as its three files (STEM.json, STEM.md, STEM.png) and saving a plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pairforge.io import atomic_write_text


def save_figure(figure, axis, path: str | Path) -> Path:
    """Legend, grid and tight layout on `axis`, then save `figure` to `path` (100 dpi) and close."""
    import matplotlib.pyplot as plt

    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_result_files(
    result: dict, out_dir: str | Path, stem: str, table: str, plot: Callable[[dict, Path], Path]
) -> dict[str, Path]:
    """OUT/STEM.json (the result), OUT/STEM.md (`table`) and OUT/STEM.png (`plot(result, path)`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"{stem}.json",
        "table": out_dir / f"{stem}.md",
        "plot": out_dir / f"{stem}.png",
    }
    atomic_write_text(paths["json"], json.dumps(result, indent=2))
    atomic_write_text(paths["table"], table + "\n")
    plot(result, paths["plot"])
    return paths
