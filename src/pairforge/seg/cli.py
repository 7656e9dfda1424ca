"""`pairforge seg`: fit a few-label segmentation head on diffusion features, predict, evaluate,
auto-label generated images, and train the supervised baseline on the same tiles."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text

app = typer.Typer(
    no_args_is_help=True,
    help="Label-efficient segmentation from frozen diffusion features (DDPM-seg).",
)

# Options shared by `fit` and `baseline` so both see exactly the same tiles.
_SPLIT = typer.Option("train", "--split", help="Labeled split to train on.")
_VAL_SPLIT = typer.Option(
    "val", "--val-split", help="Split for early stopping / model selection ('' = none)."
)
_MAX_IMAGES = typer.Option(
    None, "--max-images", min=1, help="Use this many randomly chosen training tiles."
)
_DATA_SEED = typer.Option(0, "--data-seed", min=0, help="Seed of the --max-images choice.")
_CROP = typer.Option(
    None, "--crop-size", min=1, help="Source tile side in px [default: the run's crop_size]."
)
_RESOLUTION = typer.Option(
    None, "--resolution", min=1, help="Model side in px [default: the run's resolution]."
)
_SEED = typer.Option(0, "--seed", min=0, help="Training seed.")
_UNCERTAINTY = typer.Option(
    "js",
    "--uncertainty",
    help="Per-pixel uncertainty: js (Jensen-Shannon disagreement of the ensemble members, "
    "the DatasetDDPM score) | entropy (of the mean softmax) | disagreement (vote fraction).",
)
_DEVICE = typer.Option("cpu", "--device", help="cpu / cuda.")


def _scale(source, crop_size: int | None, resolution: int | None) -> tuple[int, int]:
    """(crop_size, resolution): flags, else the run's, else the model's sample_size (1:1)."""
    resolution = resolution or source.extra.get("resolution")
    if resolution is None:
        sample_size = getattr(source.model.config, "sample_size", None)
        resolution = sample_size[0] if isinstance(sample_size, list | tuple) else sample_size
    if not resolution:
        raise PairforgeError("cannot tell the model resolution; pass --resolution")
    crop_size = crop_size or source.extra.get("crop_size") or resolution
    return int(crop_size), int(resolution)


def _iou_report(confusion, names: list[str], split: str, num_images: int) -> dict:
    import math

    from pairforge.core.metrics import miou_from_confusion

    mean, per_class = miou_from_confusion(confusion)
    return {
        "split": split,
        "num_images": num_images,
        "mean_iou": None if math.isnan(mean) else mean,
        "per_class_iou": {
            name: (None if math.isnan(v) else float(v))
            for name, v in zip(names, per_class, strict=True)
        },
    }


def _print_report(report: dict, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    mean = report["mean_iou"]
    typer.echo(f"{title} on {report['split']} ({report['num_images']} tiles): mIoU {mean:.4f}")
    for name, value in report["per_class_iou"].items():
        typer.echo(f"  {name:>20s}: " + ("absent" if value is None else f"{value:.4f}"))


@app.command("fit")
def fit_command(
    run: Path = typer.Option(
        ..., "--run", help="pairforge run (RUN) or diffusers UNet2DModel folder."
    ),
    data: Path = typer.Option(..., "--data", help="Dataset folder with labeled masks."),
    out: Path = typer.Option(Path("seg-head"), "--out", help="Head folder to write."),
    split: str = _SPLIT,
    val_split: str = _VAL_SPLIT,
    max_images: int = _MAX_IMAGES,
    data_seed: int = _DATA_SEED,
    crop_size: int = _CROP,
    resolution: int = _RESOLUTION,
    timesteps: str = typer.Option(
        None,
        "--timesteps",
        help="Timesteps t of the model's schedule, comma list [default: 50,150,250].",
    ),
    noise_levels: str = typer.Option(
        None,
        "--noise-levels",
        help="Schedule-independent noise levels instead of --timesteps, resolved to the "
        "nearest timesteps of the model's schedule: abar:0.970,0.786,0.521 | "
        "logsnr:3.47,1.30,0.09 | baranchuk (the published levels: abar of t 50/150/250 on the "
        "linear schedule).",
    ),
    blocks: str = typer.Option(
        None, "--blocks", help="Decoder blocks, e.g. up_blocks.1,up_blocks.2 [default: all up]."
    ),
    noise_seed: int = typer.Option(0, "--noise-seed", help="Seed of the one fixed noise tensor."),
    mask_fill: str = typer.Option(
        "mean",
        "--mask-fill",
        help="Joint models: mask channels of x0 = mean (mean code of the training masks' class "
        "fractions; measured best) | zeros | noise.",
    ),
    num_models: int = typer.Option(10, "--num-models", min=1, help="Ensemble size."),
    max_epochs: int = typer.Option(20, "--epochs", min=1, help="Max epochs per MLP."),
    pixels_per_image: int = typer.Option(
        None, "--pixels-per-image", min=1, help="Subsample labeled pixels per tile."
    ),
    cache: Path = typer.Option(None, "--cache", help="Memory-map features into this folder."),
    memory_budget_gib: float = typer.Option(
        8.0, "--memory-budget-gib", min=0.01, help="Stop before allocating more RAM than this."
    ),
    class_balance: bool = typer.Option(False, "--class-balance", help="Inverse-frequency loss."),
    seed: int = _SEED,
    device: str = _DEVICE,
) -> None:
    """Fit a pixel-MLP ensemble on diffusion features of a few labeled tiles.

    Examples:

      pairforge seg fit --run runs/demo-image --data data/grains --max-images 8 --out heads/g8

      pairforge seg fit --run my_unet_dir --data data/cells --resolution 64 --timesteps 50,150

      pairforge seg fit --run runs/demo-image --data data/grains --noise-levels baranchuk
    """
    from pairforge.seg.data import class_names, labeled_tiles
    from pairforge.seg.features import (
        DEFAULT_TIMESTEPS,
        FeatureConfig,
        load_feature_source,
        parse_blocks,
        parse_noise_levels,
    )
    from pairforge.seg.head import HeadSettings, fit_head

    if timesteps is not None and noise_levels is not None:
        raise PairforgeError(
            f"--timesteps {timesteps!r} and --noise-levels {noise_levels!r} both given; pass one"
        )
    steps = DEFAULT_TIMESTEPS
    if timesteps is not None:
        try:
            steps = tuple(int(t) for t in timesteps.split(",") if t.strip())
        except ValueError as err:
            raise PairforgeError(
                f"--timesteps {timesteps!r}: use integers like 50,150,250"
            ) from err
    if noise_levels is not None:
        try:
            parse_noise_levels(noise_levels)
        except PairforgeError as err:
            raise PairforgeError(f"--noise-levels: {err}") from err
    source = load_feature_source(run)
    crop, res = _scale(source, crop_size, resolution)
    feature_config = FeatureConfig(
        steps, parse_blocks(blocks), noise_seed, mask_fill, noise_levels=noise_levels
    )
    train = labeled_tiles(
        data, split, crop, res, source.normalizer, max_images=max_images, data_seed=data_seed
    )
    val = labeled_tiles(data, val_split, crop, res, source.normalizer) if val_split else None
    names = class_names(data)
    head, history = fit_head(
        source,
        train.images,
        train.masks,
        num_classes=len(names),
        settings=HeadSettings(
            pixels_per_image=pixels_per_image,
            memory_budget_bytes=int(memory_budget_gib * 2**30),
            num_models=num_models,
            max_epochs=max_epochs,
            class_balance=class_balance,
            seed=seed,
        ),
        val_images=val.images if val else None,
        val_masks=val.masks if val else None,
        feature_config=feature_config,
        cache_dir=cache,
        device=device,
        info={
            "class_names": names,
            "crop_size": crop,
            "resolution": res,
            "normalizer": (source.normalizer or _dataset_normalizer(data)).to_dict(),
            "train_tiles": [list(s) for s in train.source],
        },
    )
    head.save(out)
    val_scores = [m["best_val_miou"] for m in history["members"] if m["best_val_miou"] is not None]
    levels = head.extractor.config
    typer.echo(
        f"head written to {out}: {len(train.source)} tiles, {history['num_pixels']} pixels x "
        f"{head.extractor.feature_dim} features at t {list(levels.timesteps)} (abar "
        f"{', '.join(f'{a:.3f}' for a in levels.abar)}); features "
        f"{history['feature_seconds']:.1f} s, "
        f"MLPs {history['mlp_seconds']:.1f} s"
        + (f"; member val mIoU {min(val_scores):.3f}..{max(val_scores):.3f}" if val_scores else "")
    )


def _dataset_normalizer(data: Path):
    from pairforge.data.dataset import load_dataset

    return load_dataset(data).normalizer


@app.command("predict")
def predict_command(
    head_dir: Path = typer.Argument(..., help="Head folder written by `seg fit`."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/ and uncertainty/."),
    data: Path = typer.Option(None, "--data", help="Dataset folder to segment."),
    split: str = typer.Option(None, "--split", help="Only this split of --data [default: all]."),
    image: Path = typer.Option(None, "--image", help="One image file (C, H, W) TIFF / NPY."),
    overlap: int = typer.Option(
        None, "--overlap", min=0, help="Window overlap in model px [default: half a window]."
    ),
    uncertainty: str = _UNCERTAINTY,
    device: str = _DEVICE,
) -> None:
    """Segment whole measurements with sliding windows at the training scale.

    Writes OUT/masks/<id>.png (class ids of the head's classes, by index) and
    OUT/uncertainty/<id>.tif (float32 per-pixel uncertainty, JS by default), plus
    OUT/scores.json (per-image score = mean of the top-10% most uncertain pixels).

    Example:

      pairforge seg predict heads/g8 --data data/grains --split test --out pred/
    """
    import numpy as np
    import tifffile
    from PIL import Image

    from pairforge.seg.ensemble import check_uncertainty_kind, image_scores
    from pairforge.seg.head import SegmentationHead
    from pairforge.seg.sliding import segment_measurement

    check_uncertainty_kind(uncertainty, "--uncertainty")
    if (data is None) == (image is None):
        raise PairforgeError("pass exactly one of --data DIR or --image FILE")
    head = SegmentationHead.load(head_dir, device=device)
    if data is not None:
        from pairforge.data.dataset import load_dataset

        dataset = load_dataset(data)
        items = [(i, lambda i=i: dataset.read_image(i)) for i in dataset.ids(split)]
    else:
        items = [(image.stem, lambda: _read_image_file(image))]
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "uncertainty").mkdir(parents=True, exist_ok=True)
    scores = {}
    for sample_id, read in items:
        result = segment_measurement(head, read(), overlap=overlap)
        maps = result.uncertainty(uncertainty)
        Image.fromarray(result.mask.numpy().astype(np.uint8)).save(
            out / "masks" / f"{sample_id}.png"
        )
        tifffile.imwrite(out / "uncertainty" / f"{sample_id}.tif", maps.numpy().astype(np.float32))
        scores[sample_id] = float(image_scores(maps[None])[0])
        typer.echo(f"{sample_id}: {tuple(result.mask.shape)} score {scores[sample_id]:.4f}")
    atomic_write_text(
        out / "scores.json", json.dumps({"uncertainty": uncertainty, "scores": scores})
    )


def _read_image_file(path: Path):
    import numpy as np

    from pairforge.data.dataset import read_array

    if not path.exists():
        raise PairforgeError(f"--image {path} does not exist")
    array = np.asarray(read_array(path), dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise PairforgeError(f"--image {path}: shape {array.shape}; expected (C, H, W)")
    return array


@app.command("eval")
def eval_command(
    head_dir: Path = typer.Argument(..., help="Head folder written by `seg fit`."),
    data: Path = typer.Option(..., "--data", help="Labeled dataset folder."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (held out!)."),
    combine: str = typer.Option(
        "mean", "--combine", help="Ensemble combining: mean (mean softmax) | vote (majority)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = _DEVICE,
) -> None:
    """Mean and per-class IoU of a head on the tiles of a labeled split (model scale)."""
    from pairforge.core.metrics import confusion_matrix
    from pairforge.data.normalize import ChannelNormalizer
    from pairforge.seg.data import class_names, labeled_tiles
    from pairforge.seg.ensemble import check_combine
    from pairforge.seg.head import SegmentationHead

    check_combine(combine, "--combine")
    head = SegmentationHead.load(head_dir, device=device)
    normalizer = ChannelNormalizer.from_dict(head.info.normalizer)
    tiles = labeled_tiles(data, split, head.info.crop_size, head.info.resolution, normalizer)
    prediction = head.segment(tiles.images, combine=combine)
    confusion = confusion_matrix(prediction.labels, tiles.masks, head.num_classes)
    names = head.info.class_names or class_names(data)
    report = _iou_report(confusion, names, split, len(tiles.source))
    report["combine"] = combine
    _print_report(report, as_json, "head")


@app.command("autolabel")
def autolabel_command(
    head_dir: Path = typer.Argument(..., help="Head folder written by `seg fit`."),
    n: int = typer.Option(..., "--n", min=1, help="Images to generate."),
    out: Path = typer.Option(..., "--out", help="Output dataset folder."),
    drop: float = typer.Option(
        0.2, "--drop", min=0.0, max=0.99, help="Fraction of most uncertain images to drop."
    ),
    run: Path = typer.Option(None, "--run", help="Run to sample [default: the head's run]."),
    uncertainty: str = _UNCERTAINTY,
    sampler: str = typer.Option("dpm++", "--sampler", help="dpm++ | ddim | ddpm."),
    steps: int = typer.Option(None, "--steps", min=1, help="Sampler steps."),
    seed: int = typer.Option(0, "--seed", min=0, help="Sample i uses seed + i."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = _DEVICE,
) -> None:
    """Generate images, label them with the head, keep the confident ones as a dataset.

    Example:

      pairforge seg autolabel heads/g8 --n 200 --drop 0.2 --out data/auto
    """
    from pairforge.seg.autolabel import autolabel
    from pairforge.seg.head import SegmentationHead

    head = SegmentationHead.load(head_dir, device=device, source=run)
    manifest = autolabel(
        head,
        out,
        n,
        run_path=run,
        drop_fraction=drop,
        uncertainty=uncertainty,
        sampler=sampler,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    typer.echo(f"{manifest['num_kept']} of {n} samples written to {out} (scores in manifest.json)")


@app.command("baseline")
def baseline_command(
    data: Path = typer.Option(..., "--data", help="Dataset folder with labeled masks."),
    run: Path = typer.Option(
        None, "--run", help="Take crop size, resolution and normalizer from this run."
    ),
    split: str = _SPLIT,
    val_split: str = _VAL_SPLIT,
    eval_split: str = typer.Option("test", "--eval-split", help="Held-out split to report."),
    max_images: int = _MAX_IMAGES,
    data_seed: int = _DATA_SEED,
    crop_size: int = _CROP,
    resolution: int = _RESOLUTION,
    epochs: int = typer.Option(
        400, "--epochs", min=1, help="Training epochs (one AdamW step per batch of tiles)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    arch: str = typer.Option("unet", "--arch", help="smp architecture."),
    encoder: str = typer.Option("resnet18", "--encoder", help="smp encoder (no pretrained)."),
    out: Path = typer.Option(None, "--out", help="Save the model (safetensors + JSON) here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    seed: int = _SEED,
    device: str = _DEVICE,
) -> None:
    """Supervised smp U-Net on the same tiles as `seg fit`; best epoch by val mIoU; test IoU.

    Example:

      pairforge seg baseline --run runs/demo-image --data data/grains --max-images 8 --json
    """
    from pairforge.core.metrics import confusion_matrix
    from pairforge.core.supervised import predict_supervised, save_supervised, train_supervised
    from pairforge.seg.data import class_names, labeled_tiles

    normalizer = None
    if run is not None:
        from pairforge.seg.features import load_feature_source

        source = load_feature_source(run)
        crop, res = _scale(source, crop_size, resolution)
        normalizer = source.normalizer
    elif resolution is None:
        raise PairforgeError("pass --run RUN or --resolution (and --crop-size) for the tile scale")
    else:
        res, crop = resolution, crop_size or resolution
    normalizer = normalizer or _dataset_normalizer(data)
    train = labeled_tiles(
        data, split, crop, res, normalizer, max_images=max_images, data_seed=data_seed
    )
    val = labeled_tiles(data, val_split, crop, res, normalizer) if val_split else None
    names = class_names(data)
    model, history = train_supervised(
        train.images,
        train.masks,
        val.images if val else None,
        val.masks if val else None,
        num_classes=len(names),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        arch=arch,
        encoder=encoder,
        device=device,
        progress=not as_json,
    )
    test = labeled_tiles(data, eval_split, crop, res, normalizer)
    confusion = confusion_matrix(predict_supervised(model, test.images), test.masks, len(names))
    report = _iou_report(confusion, names, eval_split, len(test.source))
    report["best_epoch"] = history["best_epoch"]
    report["best_val_miou"] = history["best_val_miou"]
    if out is not None:
        save_supervised(
            model,
            out,
            arch=arch,
            encoder=encoder,
            extra={"class_names": names, "crop_size": crop, "resolution": res,
                   "normalizer": normalizer.to_dict()},
        )  # fmt: skip
    _print_report(report, as_json, "supervised baseline")
