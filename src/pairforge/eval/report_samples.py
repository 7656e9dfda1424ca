"""The report's samples section: sample grids of every dataset and run, and for each generated
set a row of real tiles beside a row of generated ones at the same scale and display size."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError
from pairforge.eval.report_html import (
    missing,
    png_file_tag,
    png_tag,
    read_manifest_settings,
    rgb_png,
    settings_block,
)
from pairforge.eval.report_inputs import ReportInputs

GRID_SAMPLES = 6
GRID_CROP = 256  # px shown of large measurements (a top-left crop, not downsampled)
SIDE_BY_SIDE_TILES = 4  # pairs shown per side
TILE_DISPLAY_PX = 112  # CSS px of every side-by-side tile, real and synthetic alike
OVERLAY_ALPHA = 0.35  # the first channel stays readable under the mask colors


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


def _tile_picture(ds, image, mask) -> np.ndarray:
    """(H, W, 3) uint8: the first channel (viridis over the normalized [-1, 1]), mask overlaid."""
    from pairforge.viz import colorize_channel, overlay_mask

    rgb = colorize_channel(np.asarray(image[0]), -1.0, 1.0)
    if mask is None:
        return rgb
    return overlay_mask(rgb, np.asarray(mask), ds.spec.class_colors, alpha=OVERLAY_ALPHA)


def real_tiles(real_dir: Path, crop: int, resolution: int, count: int) -> list[np.ndarray]:
    """Up to `count` pictures of real crops of `crop` source px downsampled to `resolution` px
    (area; masks by majority), from the train split when there is one, labeled samples first."""
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import downsample_image, downsample_mask

    ds = load_dataset(real_dir)
    ids = ds.ids("train") if ds.spec.splits.get("train") else ds.ids()
    ids = [i for i in ids if ds.has_mask(i)] or ids
    factor = crop / resolution
    tiles = []
    for sample_id in ids:
        image, mask = ds.read_pair(sample_id)
        height, width = image.shape[1:]
        for top in range(0, height - crop + 1, crop):
            for left in range(0, width - crop + 1, crop):
                if len(tiles) == count:
                    return tiles
                part = ds.normalizer.encode(image[:, top : top + crop, left : left + crop])
                part_mask = None if mask is None else mask[top : top + crop, left : left + crop]
                if factor != 1:
                    part = downsample_image(part, factor)
                    if part_mask is not None:
                        part_mask = downsample_mask(part_mask, factor, ds.num_classes)
                tiles.append(_tile_picture(ds, part, part_mask))
    return tiles


def synthetic_tiles(gen_dir: Path, count: int) -> list[np.ndarray]:
    """Pictures of the first `count` generated pairs, as written (the model's pixels)."""
    from pairforge.data.dataset import load_dataset

    ds = load_dataset(gen_dir)
    ids = [i for i in ds.ids() if ds.has_mask(i)] or ds.ids()
    tiles = []
    for sample_id in ids[:count]:
        image, mask = ds.read_pair(sample_id)
        tiles.append(_tile_picture(ds, ds.normalizer.encode(image), mask))
    return tiles


MAX_SIDE_BY_SIDE = 4  # generated sets shown beside real tiles; the rest only as grids


def real_source_of(gen_dir: Path, found: ReportInputs) -> Path | None:
    """The real dataset a generated set was compared with (fid / mask_stats / downstream
    results), else the only found dataset that is not generated."""
    gen = gen_dir.resolve()

    def same(source) -> bool:
        return bool(source) and Path(source).resolve() == gen

    for _, result in found.fid + found.mask_stats:
        real = (result.get("real") or {}).get("source")
        if same((result.get("fake") or {}).get("source")) and real:
            return Path(real)
    for _, result in found.downstream:
        data = result.get("data") or {}
        synthetic = data.get("synthetic")
        if any(same(s) for s in (synthetic if isinstance(synthetic, list) else [synthetic])):
            if data.get("real"):
                return Path(data["real"])
    for _, record in found.timings:  # factory_run.json names the chain's real data
        if record.get("data") and (Path(record["data"]) / "dataset.yaml").is_file():
            return Path(record["data"])
    # Generated sets have a manifest.json, pseudo-labeled ones a pseudolabel.json.
    plain = [d for d in found.datasets
             if not (d / "manifest.json").is_file() and not (d / "pseudolabel.json").is_file()]  # fmt: skip
    return plain[0] if len(plain) == 1 else None


def _figure(caption: str, tiles: list[np.ndarray], side: str) -> str:
    images = "".join(
        png_tag(rgb_png(t), f"{side} {i}", width=TILE_DISPLAY_PX, height=TILE_DISPLAY_PX)
        for i, t in enumerate(tiles)
    )
    return (
        f'<figure class="{side}"><figcaption>{html.escape(caption)}</figcaption>'
        f'<div class="tiles">{images}</div></figure>'
    )


def _filter_record(gen_dir: Path) -> dict | None:
    """filter.json of a set written by `seg filter`, or None."""
    import json

    try:
        record = json.loads((gen_dir / "filter.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def side_by_side(gen_dir: Path, found: ReportInputs) -> str:
    """Real tiles next to generated ones, same scale (the generator's crop size and resolution),
    same display size; or what is missing to show them."""
    from pairforge.data.dataset import load_dataset
    from pairforge.eval.sets import synthetic_scale

    kept = _filter_record(gen_dir)
    if kept is not None and not kept.get("kept"):
        return (f"<p>`seg filter` kept none of the {kept.get('total')} pairs of "
                f"{html.escape(str(kept.get('set', 'its set')))} (threshold "
                f"{kept.get('threshold')}): nothing to show.</p>")  # fmt: skip
    real_dir = real_source_of(gen_dir, found)
    if real_dir is None or not (real_dir / "dataset.yaml").is_file():
        return missing(
            f"no real dataset to compare {gen_dir} with; pass the real dataset folder too "
            "(`pairforge report REAL_DIR GENERATED_DIR EVAL_DIR --out report.html`)"
        )
    try:
        synthetic = synthetic_tiles(gen_dir, SIDE_BY_SIDE_TILES)
        gen = load_dataset(gen_dir)
        side = gen.image_size(gen.ids()[0])[0]
        crop, resolution = synthetic_scale(gen_dir) or (side, side)
        real = real_tiles(real_dir, crop, resolution, len(synthetic))
    except PairforgeError as err:
        return missing(f"real vs synthetic of {gen_dir} cannot be shown: {err}")
    if not real:
        return missing(f"{real_dir}: no image of at least {crop} px to crop real tiles from")
    count = min(len(real), len(synthetic))
    real_caption = f"real: {crop} px crops of {real_dir.name} at {resolution} px" + (
        f" (area / majority downsampling x{crop / resolution:g})" if crop != resolution else ""
    )
    gen_caption = f"synthetic: {gen_dir.name} ({resolution} px pairs)"
    note = (
        f"<p>First channel ({html.escape(gen.spec.channel_names[0])}, normalized range), mask "
        f"overlaid; every tile shown at {TILE_DISPLAY_PX} px.</p>"
    )
    return (
        f'<div class="side-by-side">{_figure(real_caption, real[:count], "real")}'
        f"{_figure(gen_caption, synthetic[:count], 'synthetic')}</div>{note}"
    )


def samples_section(found: ReportInputs) -> str:
    from pairforge.eval.sets import synthetic_scale

    # Real beside synthetic first: the comparison a reader looks for, before the full grids.
    generated = [d for d in found.datasets if (d / "manifest.json").is_file()]
    parts = [
        f"<h3>Real vs synthetic, same scale: {html.escape(str(d))}</h3>" + side_by_side(d, found)
        for d in generated[:MAX_SIDE_BY_SIDE]
    ]
    if len(generated) > MAX_SIDE_BY_SIDE:
        rest = ", ".join(html.escape(str(d)) for d in generated[MAX_SIDE_BY_SIDE:])
        parts.append(f"<p>{len(generated) - MAX_SIDE_BY_SIDE} more generated sets (their grids "
                     f"are below): {rest}</p>")  # fmt: skip
    # Show real measurements at the scale the generated pairs have (their runs' crop size and
    # resolution), so the grids compare like for like.
    scales = [synthetic_scale(d) for d in found.datasets]
    shared = next((s for s in scales if s is not None), None)
    for dataset, own in zip(found.datasets, scales):
        kept = _filter_record(dataset)
        if kept is not None and not kept.get("kept"):
            continue  # an empty filtered set: said in its real-vs-synthetic row above
        try:
            grid = png_tag(render_pairs_grid(dataset, scale=own or shared), f"samples of {dataset}")
        except PairforgeError as err:
            grid = missing(f"samples of {dataset} cannot be shown: {err}")
        generated = (dataset / "manifest.json").is_file()
        extra = read_manifest_settings(dataset) if generated else ""
        parts.append(f"<h3>{html.escape(str(dataset))}</h3>{grid}{extra}")
    for run in found.runs:
        previews = sorted((run / "samples").glob("step-*.png"))
        block = (
            png_file_tag(previews[-1], f"training samples of {run}")
            if previews
            else missing(f"no training previews in {run / 'samples'}")
        )
        config = run / "config.yaml"
        settings = settings_block(config.read_text()) if config.is_file() else ""
        parts.append(f"<h3>run {html.escape(str(run))}</h3>{block}{settings}")
    if not parts:
        return missing(
            "no datasets or runs found; pass a generated dataset (pairforge generate --out DIR) "
            "or a run directory"
        )
    return "".join(parts)
