"""`pairforge generate`: sample image + mask pairs from trained runs into a dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="generate commands")

# A paragraph of its own: the help's first paragraph is the summary line of command lists.
EXAMPLES = """

Examples:

  pairforge generate --pipeline joint --run runs/joint --n 64 --out gen/joint

  pairforge generate --pipeline two-stage --mask-run runs/mask --sdm-run runs/sdm
  --guidance 1.5 --sr runs/sr --n 256 --out gen/two-stage-sr

  pairforge generate --pipeline two-stage --mask-run runs/mask-frac --sdm-run runs/sdm
  --fractions grain=0.45,pore=0.10 --guidance-fractions 2 --n 64 --out gen/steered

  pairforge generate --pipeline joint --run runs/joint-frac --oversample pore=3 --n 64
  --out gen/more-pores

  pairforge generate --pipeline paint --sdm-run runs/sdm --masks my-masks --n 8 --out gen/painted

  accelerate launch --multi_gpu --num_processes 2 -m pairforge.cli generate ... (sharded; resumable)
"""

N_HELP = (
    "number of pairs (default: 16; paint: one per labeled mask); an existing --out is "
    "resumed or extended to N pairs, and refused if it already holds more than N"
)
GUIDANCE_HELP = "classifier-free guidance scale (default: the SDM run's, else 1.5)"
FRACTIONS_HELP = (
    "target class fractions of a fraction-conditioned mask / joint run (trained with "
    "model.fraction_conditioning=true), e.g. grain=0.45,pore=0.10: class names of the dataset, "
    "values >= 0 summing to <= 1; classes left out share the remainder in proportion to their "
    "training mean"
)
FRACTIONS_FROM_HELP = "train: each sample's target is the fractions of a training crop (seeded)"
OVERSAMPLE_HELP = (
    "targets drawn from the training crops with these classes' fractions multiplied, then "
    "renormalized, e.g. pore=3"
)
FRACTION_GUIDANCE_HELP = (
    "classifier-free guidance scale w on the fraction condition (default: the run's "
    "model.fraction_guidance, else 2.0); 0 = unconditional"
)
SR_NOISE_LEVEL_HELP = "fixed low-res noise augmentation level (default: the SR run's, else 0.2)"


@app.command("generate", help="Generate image + mask pairs into a dataset folder." + EXAMPLES)
def generate(
    out: Path = typer.Option(..., "--out", help="output dataset folder (resumed if it exists)"),
    pipeline: str = typer.Option(
        "joint", "--pipeline", help="joint | two-stage | paint (SDM images for --masks)"
    ),
    run: Path | None = typer.Option(None, "--run", help="joint run folder (task joint)"),
    mask_run: Path | None = typer.Option(None, "--mask-run", help="mask DDPM run (task mask)"),
    sdm_run: Path | None = typer.Option(None, "--sdm-run", help="SDM run (task sdm)"),
    masks: Path | None = typer.Option(
        None, "--masks", help="paint: dataset folder whose labeled masks get images"
    ),
    sr: Path | None = typer.Option(None, "--sr", help="super-resolution run (task sr), optional"),
    n: int | None = typer.Option(None, "--n", min=1, help=N_HELP),
    seed: int = typer.Option(0, "--seed", min=0, help="seed of pair 0; pair i uses seed + i"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="pairs per batch and process"),
    sampler: str = typer.Option("dpm++", "--sampler", help="dpm++ | ddim | ddpm"),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="sampler steps (default: 25 dpm++, 50 ddim, 1000 ddpm)"
    ),
    guidance: float | None = typer.Option(None, "--guidance", min=0.0, help=GUIDANCE_HELP),
    sr_noise_level: float | None = typer.Option(
        None, "--sr-noise-level", min=0.0, max=1.0, help=SR_NOISE_LEVEL_HELP
    ),
    fractions: str | None = typer.Option(None, "--fractions", help=FRACTIONS_HELP),
    fractions_from: str | None = typer.Option(None, "--fractions-from", help=FRACTIONS_FROM_HELP),
    oversample: str | None = typer.Option(None, "--oversample", help=OVERSAMPLE_HELP),
    guidance_fractions: float | None = typer.Option(
        None, "--guidance-fractions", min=0.0, help=FRACTION_GUIDANCE_HELP
    ),
    bf16: bool = typer.Option(
        False, "--bf16", help="bf16 autocast (same as --precision bf16; slow without AMX / GPU)"
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="auto (bf16 where native: AMX CPUs, GPUs) | fp32 | bf16"
    ),
    device: str | None = typer.Option(None, "--device", help="(default: accelerate's device)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="print the resolved settings, generate nothing"
    ),
) -> None:
    import json

    import torch
    from accelerate import PartialState

    from pairforge.generate.plan import build_plan
    from pairforge.generate.writer import generation_settings, write_generated_dataset

    state = PartialState(cpu=device == "cpu")
    plan = build_plan(
        pipeline=pipeline,
        paths={"joint": run, "mask": mask_run, "sdm": sdm_run, "sr": sr},
        device=torch.device(device) if device else state.device,
        masks=masks,
        n=n,
        seed=seed,
        batch_size=batch_size,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        sr_noise_level=sr_noise_level,
        precision="bf16" if bf16 else precision,
        fractions=fractions,
        fractions_from=fractions_from,
        oversample=oversample,
        fraction_guidance=guidance_fractions,
    )
    if dry_run:
        if state.is_main_process:
            settings = generation_settings(plan)
            typer.echo(json.dumps({**settings, "n": plan.num_samples, "out": str(out)}, indent=2))
        return
    manifest = write_generated_dataset(
        plan,
        out,
        process_index=state.process_index,
        num_processes=state.num_processes,
        barrier=state.wait_for_everyone,
        progress=progress,
    )
    if manifest is not None:
        typer.echo(_summary_line(out, manifest))


def _summary_line(out: Path, manifest: dict) -> str:
    done = manifest["generated_this_session"]
    line = (
        f"{out}: {manifest['num_samples']} pairs ({done['samples']} new, "
        f"{done['process_seconds']:.1f} process-s)"
    )
    errors = manifest.get("fraction_mean_abs_error")
    if errors:
        line += "; fraction error " + ", ".join(f"{k} {v:.3f}" for k, v in errors.items())
    if manifest.get("sr_mask_agreement_mean") is not None:
        line += f"; SR mask agreement {manifest['sr_mask_agreement_mean']:.4f}"
    return line
