"""The sections of the HTML report (`eval.report`): sample grids, FID / KID, mask statistics,
few-label and downstream segmentation mIoU, wall time; each renders what `collect_results`
found, or says what is missing and which command makes it."""

from __future__ import annotations

import base64
import html
import json
from functools import partial
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError
from pairforge.eval.report_inputs import ReportInputs, read_json

GRID_SAMPLES = 6
GRID_CROP = 256  # px shown of large measurements (a top-left crop, not downsampled)


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


def _records_table(columns, records: list[dict]) -> str:
    """One table row per record; columns: (header, key of the record or function of it)."""
    return _table(
        [header for header, _ in columns],
        [[get(r) if callable(get) else r[get] for _, get in columns] for r in records],
    )


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
            settings = {k: v for k, v in read_json(manifest).items() if k != "samples"}
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
    ("samples", "Samples and overlays", _samples_section),
    ("fid", "FID / KID", _fid_section),
    ("mask-stats", "Mask statistics", _mask_stats_section),
    ("factory", "The factory: baseline, head, distilled, + synthetic", _factory_section),
    ("few-label", "Few labels: head and real + synthetic vs the baseline", _few_label_section),
    ("segmentation", "Segmentation with few labels (mIoU)", _segmentation_section),
    ("downstream", "Downstream segmentation (mIoU)", _downstream_section),
    ("timing", "Wall time", _timing_section),
)
