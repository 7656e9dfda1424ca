"""What `pairforge report` found under its paths: eval results (fid.json, mask_stats.json,
downstream.json, few_label.json, factory.json, seg_*.json, demo.json, factory_run.json), run folders and datasets, scanned up to 3 levels deep."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pairforge.errors import PairforgeError

EVAL_FILES = {
    "fid": "fid.json",
    "mask_stats": "mask_stats.json",
    "downstream": "downstream.json",
    "few_label": "few_label.json",
    "factory": "factory.json",
}
SCAN_DEPTH = 3
SKIP_DIRS = {"images", "masks", "checkpoints", "model", "samples", "__pycache__"}


@dataclass
class ReportInputs:
    """What was found under the given paths."""

    fid: list[tuple[Path, dict]] = field(default_factory=list)
    mask_stats: list[tuple[Path, dict]] = field(default_factory=list)
    downstream: list[tuple[Path, dict]] = field(default_factory=list)
    few_label: list[tuple[Path, dict]] = field(default_factory=list)
    factory: list[tuple[Path, dict]] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    datasets: list[Path] = field(default_factory=list)
    segmentation: list[tuple[Path, dict]] = field(default_factory=list)
    timings: list[tuple[Path, dict]] = field(default_factory=list)


def read_json(path: Path) -> dict:
    """A result file's JSON; PairforgeError naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PairforgeError(
            f"{path}: cannot be read as JSON ({err}); re-run the command that wrote it"
        ) from err


def collect_results(paths: list[str | Path]) -> ReportInputs:
    """Find eval results, runs and datasets under `paths` (each scanned up to 3 levels deep)."""
    found = ReportInputs()
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise PairforgeError(f"{root}: not found; pass run, eval or dataset directories")
        for folder, subdirs, files in os.walk(root):
            folder_path = Path(folder).resolve()
            depth = len(folder_path.relative_to(root.resolve()).parts)
            subdirs[:] = sorted(
                d
                for d in subdirs
                if not d.startswith(".") and d not in SKIP_DIRS and depth < SCAN_DEPTH
            )
            if folder_path in seen:
                continue
            seen.add(folder_path)
            for key, name in EVAL_FILES.items():
                if name in files:
                    getattr(found, key).append((folder_path, read_json(folder_path / name)))
            for name in sorted(files):
                # `pairforge seg eval|baseline --json` output saved as EVAL/seg_<what>.json
                if name.startswith("seg_") and name.endswith(".json"):
                    result = read_json(folder_path / name)
                    if "mean_iou" in result:
                        found.segmentation.append((folder_path / name, result))
            for name in ("demo.json", "factory_run.json"):  # `pairforge demo` / `factory`
                if name in files:
                    found.timings.append((folder_path, read_json(folder_path / name)))
            if (folder_path / "model" / "pairforge.json").is_file():
                found.runs.append(folder_path)
            if "dataset.yaml" in files:
                found.datasets.append(folder_path)
    # Datasets the eval results were computed on, when they still exist.
    for _, result in found.fid + found.mask_stats:
        for role in ("real", "fake"):
            source = (result.get(role) or {}).get("source")
            _add_dataset(found, source)
    for _, result in found.downstream:
        data = result.get("data") or {}
        synthetic = data.get("synthetic")  # one folder (older results) or a list of sets
        for source in [
            data.get("real"),
            *(synthetic if isinstance(synthetic, list) else [synthetic]),
        ]:
            _add_dataset(found, source)
    return found


def _add_dataset(found: ReportInputs, source) -> None:
    if not source:
        return
    path = Path(source).resolve()
    if (path / "dataset.yaml").is_file() and path not in found.datasets:
        found.datasets.append(path)
