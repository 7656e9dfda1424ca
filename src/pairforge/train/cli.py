"""`pairforge train` and `pairforge sample`: train a diffusion model, sample a trained run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import typer

from pairforge.errors import PairforgeError

app = typer.Typer(no_args_is_help=True, help="Train diffusion models and sample trained runs.")


# A Literal is a choice typer checks itself (exit 2 naming --sampler), like an Enum without one.
SamplerName = Literal["dpm++", "ddim", "ddpm"]


@app.command("train")
def train_command(
    config: str = typer.Argument(
        ...,
        help="Preset name (e.g. tiny, demo-image, demo-joint, demo-mask, demo-sdm, grains-64; "
        "all in pairforge/configs/) or a YAML file.",
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a key, e.g. --set optim.lr=1e-4 (repeatable)."
    ),
    out: Path = typer.Option(
        None, "--out", help="Run directory (default: runs/CONFIG-NAME); resumes if it exists."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config and exit without training."
    ),
    labels: str = typer.Option(
        None,
        "--labels",
        help="Label budget (tasks that read masks): N labeled tiles of data.split, or 'all'; "
        "same as --set data.labels=N.",
    ),
    label_seed: int = typer.Option(
        None, "--label-seed", min=0, help="Seed of the budget's tiles (data.label_seed)."
    ),
    label_tile: int = typer.Option(
        None,
        "--label-tile",
        min=8,
        help="Label tile side in source px (data.label_tile; default: data.crop_size).",
    ),
) -> None:
    """Train a DDPM (image / joint / mask / sdm / sr) into a run directory.

    Re-running the same command continues from the last complete checkpoint.
    Several processes or GPUs: prefix with `accelerate launch [--multi_gpu --num_processes N] -m`.

    Examples:

      pairforge data grains data/grains

      pairforge train demo-image --out runs/demo-image

      pairforge train demo-joint --set optim.max_minutes=5 --set precision=fp32

      pairforge train demo-joint --labels 8 --label-seed 1

      accelerate launch --multi_gpu --num_processes 2 -m pairforge.cli train grains-64
    """
    from pairforge.config import load_config

    resolved = load_config(
        config, [*(set_ or []), *_label_overrides(labels, label_seed, label_tile)]
    )
    if dry_run:
        typer.echo(resolved.to_yaml(), nl=False)
        return
    from pairforge.train.loop import train

    run_dir = out if out is not None else Path("runs") / Path(config).stem
    train(resolved, run_dir)
    if os.environ.get("RANK", "0") == "0":  # one message under accelerate launch / torchrun
        typer.echo(f"run written to {run_dir} (weights in {run_dir / 'model'})")


def _label_overrides(labels: str | None, seed: int | None, tile: int | None) -> list[str]:
    """--labels / --label-seed / --label-tile as --set assignments of data.labels / ..."""
    from pairforge.data.budget import parse_labels_choice

    out = []
    if labels is not None:
        size = parse_labels_choice(labels, "--labels")  # the error names the flag
        out.append(f"data.labels={'all' if size is None else size}")
    if seed is not None:
        out.append(f"data.label_seed={seed}")
    if tile is not None:
        out.append(f"data.label_tile={tile}")
    return out


@app.command("sample")
def sample_command(
    run: Path = typer.Argument(..., help="Run directory written by `pairforge train`."),
    n: int = typer.Option(..., "--n", min=1, help="Number of samples."),
    out: Path = typer.Option(..., "--out", help="Output dataset folder."),
    sampler: SamplerName = typer.Option("dpm++", "--sampler", help="Sampler."),
    steps: int = typer.Option(
        None, "--steps", min=1, help="Sampler steps (default: 25 dpm++, 50 ddim, 1000 ddpm)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Sample i uses seed + i."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Samples per model call."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast (AMX CPUs and GPUs)."),
    device: str = typer.Option(None, "--device", help="cpu / cuda (default: cuda if present)."),
) -> None:
    """Sample an image / joint / mask run into a dataset folder in physical units.

    The same --seed gives the same samples whatever --batch-size; joint masks are decoded by
    the codec. sdm / sr runs need conditions: use `pairforge generate`.

    Examples:

      pairforge sample runs/demo-image --n 64 --out synth/demo-image

      pairforge sample runs/demo-joint --n 500 --out synth/joint --sampler ddim --steps 50 --bf16
    """
    from pairforge.train.sample_dataset import sample_run_to_dataset

    if not run.is_dir():
        raise PairforgeError(f"RUN {run}: no such run directory; pass the --out of a training run.")
    sample_run_to_dataset(
        run, out, n, sampler, steps, seed, batch_size, bf16, device, progress=True
    )
    typer.echo(f"wrote {n} samples to {out} (grid: {out / 'grid.png'})")
