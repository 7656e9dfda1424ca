"""The typer options of `pairforge seg` commands, shared so that commands reading the same
tiles or training the same segmenter spell their flags alike."""

from __future__ import annotations

import json
from pathlib import Path

import typer

# Options shared by `fit` and `baseline` so both see exactly the same tiles.
_LABELS = typer.Option(
    "all",
    "--labels",
    help="Label budget: this many labeled tiles of the label split, drawn by --label-seed "
    "(every 4th is a selection tile for early stopping / best epoch), 'all', or a budget file "
    "(budget.json of seg import-labels: the head's tiles plus the newly labeled ones).",
)
_LABEL_SEED = typer.Option(0, "--label-seed", min=0, help="Seed of the label budget's draw.")
_LABEL_TILE = typer.Option(
    None, "--label-tile", min=1, help="Label tile side in source px [default: the crop size]."
)
_LABEL_SPLIT = typer.Option("train", "--label-split", help="Split the labeled tiles come from.")
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
_OVERLAP = typer.Option(
    None, "--overlap", min=0, help="Window overlap in model px [default: half a window]."
)
_HEAD_DIR = typer.Argument(..., help="Head folder written by `seg fit`.")
_AS_JSON = typer.Option(False, "--json", help="Print JSON.")

# `fit` options.
_FIT_RUN = typer.Option(..., "--run", help="pairforge run (RUN) or diffusers UNet2DModel folder.")
_FIT_DATA = typer.Option(..., "--data", help="Dataset folder with labeled masks.")
_FIT_OUT = typer.Option(Path("seg-head"), "--out", help="Head folder to write.")
_TIMESTEPS = typer.Option(
    None,
    "--timesteps",
    help="Timesteps t of the model's schedule, comma list [default: 50,150,250].",
)
_NOISE_LEVELS = typer.Option(
    None,
    "--noise-levels",
    help="Schedule-independent noise levels instead of --timesteps, resolved to the "
    "nearest timesteps of the model's schedule: abar:0.970,0.786,0.521 | "
    "logsnr:3.47,1.30,0.09 | baranchuk (the published levels: abar of t 50/150/250 on the "
    "linear schedule).",
)
_BLOCKS = typer.Option(
    None, "--blocks", help="Decoder blocks, e.g. up_blocks.1,up_blocks.2 [default: all up]."
)
_NOISE_SEED = typer.Option(0, "--noise-seed", help="Seed of the one fixed noise tensor.")
_MASK_FILL = typer.Option(
    "mean",
    "--mask-fill",
    help="Joint models: mask channels of x0 = mean (mean code of the training masks' class "
    "fractions; measured best) | zeros | noise.",
)
_NUM_MODELS = typer.Option(10, "--num-models", min=1, help="Ensemble size.")
_MLP_EPOCHS = typer.Option(
    20,
    "--epochs",
    min=1,
    help="Max epochs per MLP (passes over the labeled pixels, also when --pixels-per-image samples them).",
)
_PIXELS_PER_IMAGE = typer.Option(
    None,
    "--pixels-per-image",
    min=1,
    help="Store at most this many labeled pixels per tile (less memory); epochs and patience scale so the MLPs take as many steps as on every pixel.",
)
_CACHE = typer.Option(None, "--cache", help="Memory-map features into this folder.")
_MEMORY_BUDGET_GIB = typer.Option(
    8.0, "--memory-budget-gib", min=0.01, help="Stop before allocating more RAM than this."
)
_CLASS_BALANCE = typer.Option(False, "--class-balance", help="Inverse-frequency loss.")


# Options of the supervised smp segmenter (`baseline` and `distill`).
_EVAL_SPLIT = typer.Option("test", "--eval-split", help="Held-out split to report.")
_SUP_BATCH = typer.Option(8, "--batch-size", min=1)
_SUP_STEPS = typer.Option(
    None, "--steps", min=1, help="At least this many steps (whole epochs); overrides --epochs."
)
_SUP_LR = typer.Option(1e-3, "--lr", min=0.0)
_SUP_ARCH = typer.Option("unet", "--arch", help="smp architecture.")
_SUP_ENCODER = typer.Option("resnet18", "--encoder", help="smp encoder (no pretrained).")
_SUP_OUT = typer.Option(None, "--out", help="Save the model (safetensors + JSON) here.")


def print_report(report: dict, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    mean = report["mean_iou"]
    typer.echo(f"{title} on {report['split']} ({report['num_images']} tiles): mIoU {mean:.4f}")
    labels = report.get("labels")
    if labels and labels.get("budget") is None:
        typer.echo(f"  labels read: {labels.get('tiles')} training tiles; {labels.get('note')}")
    elif labels:
        typer.echo(
            f"  labels read: {labels.get('tiles')} tiles ({labels.get('fit_tiles')} fit + "
            f"{labels.get('select_tiles')} select), {labels.get('pixels')} px"
        )
    for warning in report.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    for name, value in report["per_class_iou"].items():
        typer.echo(f"  {name:>20s}: " + ("absent" if value is None else f"{value:.4f}"))
