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

import base64
import datetime
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text

EVAL_FILES = {"fid": "fid.json", "mask_stats": "mask_stats.json", "downstream": "downstream.json"}
SCAN_DEPTH = 3
SKIP_DIRS = {"images", "masks", "checkpoints", "model", "samples", "__pycache__"}
GRID_SAMPLES = 6
GRID_CROP = 256  # px shown of large measurements (a top-left crop, not downsampled)


@dataclass
class ReportInputs:
    """What was found under the given paths."""

    fid: list[tuple[Path, dict]] = field(default_factory=list)
    mask_stats: list[tuple[Path, dict]] = field(default_factory=list)
    downstream: list[tuple[Path, dict]] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    datasets: list[Path] = field(default_factory=list)
    segmentation: list[tuple[Path, dict]] = field(default_factory=list)
    timings: list[tuple[Path, dict]] = field(default_factory=list)


def _read_json(path: Path) -> dict:
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
                    getattr(found, key).append((folder_path, _read_json(folder_path / name)))
            for name in sorted(files):
                # `pairforge seg eval|baseline --json` output saved as EVAL/seg_<what>.json
                if name.startswith("seg_") and name.endswith(".json"):
                    result = _read_json(folder_path / name)
                    if "mean_iou" in result:
                        found.segmentation.append((folder_path / name, result))
            if "demo.json" in files:
                found.timings.append((folder_path, _read_json(folder_path / "demo.json")))
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
        for role in ("real", "synthetic"):
            _add_dataset(found, (result.get("data") or {}).get(role))
    return found


def _add_dataset(found: ReportInputs, source) -> None:
    if not source:
        return
    path = Path(source).resolve()
    if (path / "dataset.yaml").is_file() and path not in found.datasets:
        found.datasets.append(path)


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------


def _png_tag(data: bytes, alt: str, width: int | None = None) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    size = f' style="max-width:{width}px"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}"{size}>'


def _png_file_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return _missing(f"{path.name} not found in {path.parent}")
    return _png_tag(path.read_bytes(), alt)


def _missing(what: str) -> str:
    return f'<p class="missing">Missing: {html.escape(what)}</p>'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _settings_block(settings) -> str:
    text = (
        json.dumps(settings, indent=2, default=str) if not isinstance(settings, str) else settings
    )
    return f"<details><summary>settings</summary><pre>{html.escape(text)}</pre></details>"


def render_pairs_grid(
    dataset_dir: str | Path,
    num_samples: int = GRID_SAMPLES,
    scale: tuple[int, int] | None = None,
) -> bytes:
    """PNG of the first samples (labeled first): each channel (viridis), then mask and overlay.

    Channels are scaled with the dataset normalizer's range ([-1, 1] after normalization).
    `scale` = (crop_size, resolution): images larger than the crop show a crop_size crop
    downsampled to the resolution (area; masks by majority), as the models see them, so real
    and generated grids compare at one scale. Without it, images larger than 256 px show their
    top-left 256 px crop. Samples of another size than the first are left out.
    """
    import tempfile

    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import downsample_image, downsample_mask
    from pairforge.viz import save_grid

    ds = load_dataset(dataset_dir)
    ids = ds.ids()
    labeled = [i for i in ids if ds.has_mask(i)]
    ids = (labeled or ids)[:num_samples]
    images, masks = [], []
    crop = GRID_CROP if scale is None else scale[0]
    for sample_id in ids:
        image, mask = ds.read_pair(sample_id)
        image = ds.normalizer.encode(image[:, :crop, :crop])
        mask = None if mask is None else mask[:crop, :crop]
        if scale is not None and min(image.shape[1:]) >= crop and crop != scale[1]:
            image = downsample_image(image, crop / scale[1])
            mask = None if mask is None else downsample_mask(mask, crop / scale[1], ds.num_classes)
        if images and image.shape != images[0].shape:
            continue
        images.append(image)
        masks.append(mask)
    with_masks = bool(labeled)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(
            Path(tmp) / "grid.png",
            np.stack(images),
            np.stack(masks) if with_masks else None,
            channel_names=ds.spec.channel_names,
            class_colors=ds.spec.class_colors,
            value_ranges=[(-1.0, 1.0)] * ds.num_channels,
            title=" | ".join(ds.spec.channel_names + (["mask", "overlay"] if with_masks else [])),
        )
        return path.read_bytes()


def _samples_section(found: ReportInputs) -> str:
    from pairforge.eval.sets import synthetic_scale

    parts = []
    # Show real measurements at the scale the generated pairs have (their runs' crop size and
    # resolution), so the grids compare like for like.
    scales = [synthetic_scale(d) for d in found.datasets]
    shared = next((s for s in scales if s is not None), None)
    for dataset, own in zip(found.datasets, scales):
        try:
            grid = _png_tag(
                render_pairs_grid(dataset, scale=own or shared), f"samples of {dataset}"
            )
        except PairforgeError as err:
            grid = _missing(f"samples of {dataset} cannot be shown: {err}")
        extra = ""
        manifest = dataset / "manifest.json"
        if manifest.is_file():
            settings = {k: v for k, v in _read_json(manifest).items() if k != "samples"}
            extra = _settings_block(settings)
        parts.append(f"<h3>{html.escape(str(dataset))}</h3>{grid}{extra}")
    for run in found.runs:
        previews = sorted((run / "samples").glob("step-*.png"))
        block = (
            _png_file_tag(previews[-1], f"training samples of {run}")
            if previews
            else _missing(f"no training previews in {run / 'samples'}")
        )
        config = run / "config.yaml"
        settings = _settings_block(config.read_text()) if config.is_file() else ""
        parts.append(f"<h3>run {html.escape(str(run))}</h3>{block}{settings}")
    if not parts:
        return _missing(
            "no datasets or runs found; pass a generated dataset (pairforge generate --out DIR) "
            "or a run directory"
        )
    return "".join(parts)


def _fid_section(found: ReportInputs) -> str:
    from pairforge.eval.fid import MEAN_ROW_LABEL, row_label

    if not found.fid:
        return _missing(
            "no fid.json found; run `pairforge eval fid REAL_DIR FAKE_DIR --out EVAL_DIR`"
        )
    parts = []
    for folder, result in found.fid:
        rows = [
            [
                row_label(r),
                r["features"],
                r["fid"],
                None if r["kid_mean"] is None else r["kid_mean"] * 1e3,
                None if r.get("kid_std") is None else r["kid_std"] * 1e3,
                r["n_real"],
                r["n_fake"],
            ]
            for r in result["rows"]
        ]
        table = _table(
            ["target", "features", "FID", "KID x1e3", "KID std x1e3", "n real", "n synthetic"], rows
        )
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
        parts.append(
            f"<h3>{html.escape(str(folder))}</h3>{counts}{table}{warnings}"
            f"{_settings_block(result.get('settings', {}))}"
        )
    return "".join(parts)


def _mask_stats_section(found: ReportInputs) -> str:
    if not found.mask_stats:
        return _missing(
            "no mask_stats.json found; run `pairforge eval stats REAL_DIR FAKE_DIR --out EVAL_DIR`"
        )
    parts = []
    for folder, result in found.mask_stats:
        rows = [
            [
                c["class"],
                c["fraction_real"],
                c["fraction_fake"],
                c["components_per_mask_real"],
                c["components_per_mask_fake"],
                (c["component_size_real"] or {}).get("mean"),
                (c["component_size_fake"] or {}).get("mean"),
                c["size_wasserstein"],
            ]
            for c in result["classes"]
        ]
        table = _table(
            [
                "class",
                "fraction real",
                "fraction synthetic",
                "components/mask real",
                "components/mask synthetic",
                "mean size real (px)",
                "mean size synthetic (px)",
                "size W1 (px)",
            ],
            rows,
        )
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
        parts.append(
            f"<h3>{html.escape(str(folder))}</h3>{counts}{table}{values}{plots}"
            f"{_settings_block(result.get('settings', {}))}"
        )
    return "".join(parts)


def _downstream_section(found: ReportInputs) -> str:
    if not found.downstream:
        return _missing(
            "no downstream.json found; run `pairforge eval downstream REAL_DIR SYNTHETIC_DIR "
            "--out EVAL_DIR`"
        )
    parts = []
    for folder, result in found.downstream:
        rows = [
            [
                r["condition"],
                r["n_real"],
                r["n_synthetic"],
                r["n_seeds"],
                100 * r["test_miou_mean"],
                None if r["test_miou_std"] is None else 100 * r["test_miou_std"],
                100 * r["val_miou_mean"],
            ]
            for r in result["summary"]
        ]
        table = _table(
            [
                "condition",
                "real crops",
                "synthetic pairs",
                "seeds",
                "test mIoU %",
                "std %",
                "val mIoU %",
            ],
            rows,
        )
        data = result.get("data", {})
        about = (
            f"<p>test: {data.get('n_test_tiles')} tiles of {html.escape(', '.join(data.get('test_measurements', [])))}; "
            f"model selection: {html.escape(str(data.get('model_selection')))}</p>"
        )
        notes = "".join(f'<p class="warning">{html.escape(n)}</p>' for n in result.get("notes", []))
        parts.append(
            f"<h3>{html.escape(str(folder))}</h3>{about}{table}{notes}"
            f"{_png_file_tag(folder / 'downstream.png', 'downstream mIoU vs label budget')}"
            f"{_settings_block(result.get('settings', {}))}"
        )
    return "".join(parts)


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
        per_class = result.get("per_class_iou", {})
        rows.append(
            [names.get(path.stem, path.stem), result.get("split"), result.get("num_images"),
             100 * result["mean_iou"]]
            + [None if per_class.get(c) is None else 100 * per_class[c] for c in classes]
        )  # fmt: skip
    note = (
        "<p>mIoU in % on tiles of the held-out split; both models see the same labeled "
        "training tiles, and pick their stopping point on the validation split.</p>"
    )
    header = ["model", "split", "tiles", "mIoU"] + [f"IoU {c}" for c in classes]
    return _table(header, rows) + note


def _timing_section(found: ReportInputs) -> str:
    if not found.timings:
        return _missing("no demo.json found (written by `pairforge demo`)")
    parts = []
    for folder, result in found.timings:
        rows = [[stage, seconds] for stage, seconds in result.get("seconds", {}).items()]
        rows.append(["total (before the report)", result.get("total_seconds")])
        parts.append(f"<h3>{html.escape(str(folder))}</h3>" + _table(["stage", "seconds"], rows))
    return "".join(parts)


SECTIONS = (
    ("samples", "Samples and overlays", _samples_section),
    ("fid", "FID / KID", _fid_section),
    ("mask-stats", "Mask statistics", _mask_stats_section),
    ("segmentation", "Segmentation with few labels (mIoU)", _segmentation_section),
    ("downstream", "Downstream segmentation (mIoU)", _downstream_section),
    ("timing", "Wall time", _timing_section),
)


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
