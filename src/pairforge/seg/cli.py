"""`pairforge seg`: fit a few-label segmentation head on diffusion features, predict, evaluate,
auto-label generated images, and train the supervised baseline on the same tiles."""

from __future__ import annotations

from pathlib import Path

import typer

from pairforge.errors import PairforgeError
from pairforge.seg.cli_options import (
    _AS_JSON,
    _BLOCKS,
    _CACHE,
    _CLASS_BALANCE,
    _CROP,
    _DEVICE,
    _EVAL_SPLIT,
    _FIT_DATA,
    _FIT_OUT,
    _FIT_RUN,
    _HEAD_DIR,
    _LABEL_SEED,
    _LABEL_SPLIT,
    _LABEL_TILE,
    _LABELS,
    _MASK_FILL,
    _MEMORY_BUDGET_GIB,
    _MLP_EPOCHS,
    _NOISE_LEVELS,
    _NOISE_SEED,
    _NUM_MODELS,
    _OVERLAP,
    _PIXELS_PER_IMAGE,
    _RESOLUTION,
    _SEED,
    _SUP_ARCH,
    _SUP_BATCH,
    _SUP_ENCODER,
    _SUP_LR,
    _SUP_OUT,
    _SUP_STEPS,
    _TIMESTEPS,
    _UNCERTAINTY,
    print_report,
)

app = typer.Typer(
    no_args_is_help=True,
    help="Label-efficient segmentation from frozen diffusion features (DDPM-seg).",
)


@app.command("fit")
def fit_command(
    run: Path = _FIT_RUN,
    data: Path = _FIT_DATA,
    out: Path = _FIT_OUT,
    labels: str = _LABELS,
    label_seed: int = _LABEL_SEED,
    label_tile: int = _LABEL_TILE,
    label_split: str = _LABEL_SPLIT,
    crop_size: int = _CROP,
    resolution: int = _RESOLUTION,
    timesteps: str = _TIMESTEPS,
    noise_levels: str = _NOISE_LEVELS,
    blocks: str = _BLOCKS,
    noise_seed: int = _NOISE_SEED,
    mask_fill: str = _MASK_FILL,
    num_models: int = _NUM_MODELS,
    max_epochs: int = _MLP_EPOCHS,
    pixels_per_image: int = _PIXELS_PER_IMAGE,
    cache: Path = _CACHE,
    memory_budget_gib: float = _MEMORY_BUDGET_GIB,
    class_balance: bool = _CLASS_BALANCE,
    seed: int = _SEED,
    device: str = _DEVICE,
) -> None:
    """Fit a pixel-MLP ensemble on diffusion features of a label budget's tiles.

    The budget's fit tiles train the ensemble, its select tiles stop it early (a budget under
    4 tiles has none: a holdout of the fit tiles does). A feature run trained on masks (joint)
    must have trained inside the same budget.

    Examples:

      pairforge seg fit --run runs/demo-image --data data/grains --labels 8 --out heads/g8

      pairforge seg fit --run my_unet_dir --data data/cells --resolution 64 --timesteps 50,150

      pairforge seg fit --run runs/demo-image --data data/grains --noise-levels baranchuk
    """
    from pairforge.data.budget import parse_labels_choice
    from pairforge.seg.commands import fit_head_on_dataset, fit_summary
    from pairforge.seg.data import TileChoice
    from pairforge.seg.features import feature_config_from_flags
    from pairforge.seg.head import HeadSettings

    feature_config = feature_config_from_flags(
        timesteps, noise_levels, blocks, noise_seed, mask_fill
    )
    settings = HeadSettings(
        pixels_per_image=pixels_per_image,
        memory_budget_bytes=int(memory_budget_gib * 2**30),
        num_models=num_models,
        max_epochs=max_epochs,
        class_balance=class_balance,
        seed=seed,
    )
    tiles = TileChoice(
        parse_labels_choice(labels), label_seed, label_tile, label_split, crop_size, resolution
    )
    fitted = fit_head_on_dataset(
        run, data, tiles, feature_config, settings, cache_dir=cache, device=device
    )
    for warning in fitted.warnings:
        typer.echo(f"warning: {warning}", err=True)
    fitted.head.save(out)
    typer.echo(fit_summary(out, fitted))


@app.command("predict")
def predict_command(
    head_dir: Path = _HEAD_DIR,
    out: Path = typer.Option(..., "--out", help="Output folder: masks/ and uncertainty/."),
    data: Path = typer.Option(None, "--data", help="Dataset folder to segment."),
    split: str = typer.Option(None, "--split", help="Only this split of --data [default: all]."),
    image: Path = typer.Option(None, "--image", help="One image file (C, H, W) TIFF / NPY."),
    overlap: int = _OVERLAP,
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
    from pairforge.seg.commands import predict_to_folder
    from pairforge.seg.data import measurements
    from pairforge.seg.ensemble import check_uncertainty_kind
    from pairforge.seg.head import SegmentationHead

    check_uncertainty_kind(uncertainty, "--uncertainty")
    if (data is None) == (image is None):
        raise PairforgeError("pass exactly one of --data DIR or --image FILE")
    head = SegmentationHead.load(head_dir, device=device)
    items = measurements(data, split, image)
    predict_to_folder(head, items, out, uncertainty, overlap=overlap, echo=typer.echo)


@app.command("eval")
def eval_command(
    head_dir: Path = _HEAD_DIR,
    data: Path = typer.Option(..., "--data", help="Labeled dataset folder."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (held out!)."),
    combine: str = typer.Option(
        "mean", "--combine", help="Ensemble combining: mean (mean softmax) | vote (majority)."
    ),
    as_json: bool = _AS_JSON,
    device: str = _DEVICE,
) -> None:
    """Mean and per-class IoU of a head on the tiles of a labeled split (model scale)."""
    from pairforge.seg.commands import evaluate_head
    from pairforge.seg.ensemble import check_combine
    from pairforge.seg.head import SegmentationHead

    check_combine(combine, "--combine")
    head = SegmentationHead.load(head_dir, device=device)
    print_report(evaluate_head(head, data, split, combine), as_json, "head")


@app.command("autolabel")
def autolabel_command(
    head_dir: Path = _HEAD_DIR,
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
    labels: str = _LABELS,
    label_seed: int = _LABEL_SEED,
    label_tile: int = _LABEL_TILE,
    label_split: str = _LABEL_SPLIT,
    eval_split: str = _EVAL_SPLIT,
    crop_size: int = _CROP,
    resolution: int = _RESOLUTION,
    epochs: int = typer.Option(
        400, "--epochs", min=1, help="Training epochs (one AdamW step per batch of tiles)."
    ),
    batch_size: int = _SUP_BATCH,
    steps: int = _SUP_STEPS,
    lr: float = _SUP_LR,
    arch: str = _SUP_ARCH,
    encoder: str = _SUP_ENCODER,
    out: Path = _SUP_OUT,
    as_json: bool = _AS_JSON,
    seed: int = _SEED,
    device: str = _DEVICE,
) -> None:
    """Supervised smp U-Net on the same label budget as `seg fit`; test IoU.

    The budget's fit tiles train it, its select tiles choose the best epoch (a budget under 4
    tiles has none: fixed schedule, last epoch). --json includes "labels" (tiles, pixels).

    Example:

      pairforge seg baseline --run runs/demo-image --data data/grains --labels 8 --json
    """
    from pairforge.data.budget import parse_labels_choice
    from pairforge.seg.commands import BaselineSettings, run_baseline
    from pairforge.seg.data import TileChoice

    tiles = TileChoice(
        parse_labels_choice(labels), label_seed, label_tile, label_split, crop_size, resolution
    )
    settings = BaselineSettings(
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        arch=arch,
        encoder=encoder,
    )
    report = run_baseline(
        data, run, tiles, eval_split, settings, out=out, device=device, progress=not as_json
    )
    print_report(report, as_json, "supervised baseline")


def _register_more() -> None:
    # Commands whose typer function lives beside its library code.
    from pairforge.seg.cli_semi import register as register_semi
    from pairforge.seg.pair_filter import register as register_filter
    from pairforge.seg.suggest import register as register_suggest

    register_semi(app)  # pseudolabel, distill
    register_filter(app)
    register_suggest(app)  # suggest, import-labels


_register_more()
