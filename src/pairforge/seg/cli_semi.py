"""`seg pseudolabel` and `seg distill`: the semi-supervised commands (`pairforge factory`
chains them), registered on the seg app by `register`."""

from __future__ import annotations

from pathlib import Path

import typer

from pairforge.seg.cli_options import (
    _AS_JSON,
    _DEVICE,
    _EVAL_SPLIT,
    _HEAD_DIR,
    _LABEL_SEED,
    _LABEL_SPLIT,
    _LABEL_TILE,
    _LABELS,
    _OVERLAP,
    _SEED,
    _SUP_ARCH,
    _SUP_BATCH,
    _SUP_ENCODER,
    _SUP_LR,
    _SUP_OUT,
    _SUP_STEPS,
    _UNCERTAINTY,
    print_report,
)


def pseudolabel_command(
    head_dir: Path = _HEAD_DIR,
    data: Path = typer.Option(..., "--data", help="Dataset folder whose measurements to label."),
    out: Path = typer.Option(..., "--out", help="Pseudo-labeled dataset folder to write."),
    split: str = typer.Option("train", "--split", help="Split to pseudo-label."),
    threshold: str = typer.Option(
        "auto",
        "--threshold",
        help="Uncertainty at most this keeps "
        "the head's label: auto (on its select tiles) or a number.",
    ),  # fmt: skip
    target_accuracy: float = typer.Option(
        0.95, "--target-accuracy", help="auto: kept-pixel accuracy wanted on the select tiles."
    ),
    keep_fraction: float = typer.Option(
        0.8, "--keep-fraction", help="auto without select tiles: pixels kept per measurement."
    ),
    uncertainty: str = _UNCERTAINTY,
    soft: bool = typer.Option(False, "--soft", help="Also write soft/<id>.npy (float16 probs)."),
    filled_out: Path = typer.Option(
        None,
        "--filled-out",
        help="Also write a filled set (for generators): head argmax, true labels in fit tiles.",
    ),  # fmt: skip
    overlap: int = _OVERLAP,
    device: str = _DEVICE,
) -> None:
    """Pseudo-label every measurement of a split with a head (confident pixels; true labels in
    its budget's fit tiles, select tiles unlabeled); resumable. OUT/pseudolabel.json records it.
    Several processes / GPUs: prefix with `accelerate launch --num_processes R -m`.

    Examples:

      pairforge seg pseudolabel heads/g8 --data data/grains --out g-pseudo --filled-out g-filled

      accelerate launch --num_processes 2 -m pairforge.cli seg pseudolabel heads/g8 ...
    """
    from accelerate import PartialState

    import pairforge.seg.pseudolabel as pl
    from pairforge.seg.head import SegmentationHead

    settings = pl.PseudoSettings(split, pl.parse_threshold(threshold), target_accuracy,
                                 keep_fraction, uncertainty, soft, overlap)  # fmt: skip
    state = PartialState(cpu=device == "cpu")
    # --device cuda under accelerate: each process on its own GPU (cuda:<local rank>).
    head = SegmentationHead.load(head_dir, device=str(state.device) if device == "cuda" else device)
    record = pl.pseudolabel(
        head, data, out, settings, head_path=head_dir, filled_out=filled_out, echo=typer.echo,
        process_index=state.process_index, num_processes=state.num_processes,
        barrier=state.wait_for_everyone,
    )  # fmt: skip
    if record is not None:
        typer.echo(pl.summary_line(record, out))


def distill_command(
    data: Path = typer.Option(..., "--data", help="Dataset folder with the budget's labels."),
    pseudo: Path = typer.Option(..., "--pseudo", help="Set written by `seg pseudolabel`."),
    synthetic: list[Path] = typer.Option(
        None, "--synthetic", help="Generated pair set (repeatable); read at its own scale."
    ),
    labels: str = _LABELS,
    label_seed: int = _LABEL_SEED,
    label_tile: int = _LABEL_TILE,
    label_split: str = _LABEL_SPLIT,
    weights: str = typer.Option(
        "real=1,pseudo=1,synthetic=0.5", "--weights", help="Loss weight per source (0: unused)."
    ),
    pseudo_crops: int = typer.Option(
        None, "--pseudo-crops", min=1, help="Random crops of --pseudo [default: 4 per area]."
    ),
    eval_split: str = _EVAL_SPLIT,
    epochs: int = typer.Option(
        40, "--epochs", min=1, help="Training epochs (one AdamW step per batch of tiles)."
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
    """The smp segmenter on the budget's fit tiles + pseudo-label crops (+ synthetic pairs),
    weighted per source; best epoch on the select tiles. The pseudo set's head must lie inside
    the budget.

    Example:

      pairforge seg distill --data data/grains --pseudo data/grains-pseudo --labels 8 --json
    """
    from pairforge.data.budget import parse_labels_choice
    from pairforge.seg.data import TileChoice
    from pairforge.seg.distill import DistillSettings, distill, parse_weights, source_lines

    tiles = TileChoice(parse_labels_choice(labels), label_seed, label_tile, label_split)
    settings = DistillSettings(
        epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, arch=arch,
        encoder=encoder,
        weights=parse_weights(weights), pseudo_crops=pseudo_crops,
    )  # fmt: skip
    report = distill(
        data, pseudo, tiles, eval_split, settings, synthetic=list(synthetic or []), out=out,
        device=device, progress=not as_json,
    )  # fmt: skip
    print_report(report, as_json, "distilled segmenter")
    if not as_json:
        typer.echo(source_lines(report))


def register(app: typer.Typer) -> None:
    """Add `pseudolabel` and `distill` to a typer app (the seg sub-app)."""
    app.command("pseudolabel")(pseudolabel_command)
    app.command("distill")(distill_command)
