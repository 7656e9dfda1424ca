"""`pairforge generate`: sample image + mask pairs from trained runs into a dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer

from pairforge.errors import PairforgeError

app = typer.Typer(no_args_is_help=True, help="generate commands")

EXAMPLES = """
Examples:

  pairforge generate --pipeline joint --run runs/joint --n 64 --out gen/joint

  pairforge generate --pipeline two-stage --mask-run runs/mask --sdm-run runs/sdm
  --guidance 1.5 --sr runs/sr --n 256 --out gen/two-stage-sr

  pairforge generate --pipeline paint --sdm-run runs/sdm --masks my-masks --n 8 --out gen/painted

  accelerate launch --multi_gpu --num_processes 2 -m pairforge.cli generate ... (sharded; resumable)
"""


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
    n: int | None = typer.Option(
        None,
        "--n",
        min=1,
        help="number of pairs (default: 16; paint: one per labeled mask); an existing --out is "
        "resumed or extended to N pairs, and refused if it already holds more than N",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="seed of pair 0; pair i uses seed + i"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="pairs per batch and process"),
    sampler: str = typer.Option("dpm++", "--sampler", help="dpm++ | ddim | ddpm"),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="sampler steps (default: 25 dpm++, 50 ddim, 1000 ddpm)"
    ),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        min=0.0,
        help="classifier-free guidance scale (default: the SDM run's, else 1.5)",
    ),
    sr_noise_level: float | None = typer.Option(
        None,
        "--sr-noise-level",
        min=0.0,
        max=1.0,
        help="fixed low-res noise augmentation level (default: the SR run's, else 0.2)",
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

    from pairforge.core.run import load_run
    from pairforge.diffusion.sampling import DEFAULT_STEPS, SAMPLERS
    from pairforge.generate.pipelines import (
        DEFAULT_GUIDANCE_SCALE,
        DEFAULT_SR_NOISE_LEVEL,
        SamplingSettings,
    )
    from pairforge.generate.writer import (
        GenerationPlan,
        RunRef,
        generation_settings,
        write_generated_dataset,
    )
    from pairforge.precision import resolve_precision

    if sampler not in SAMPLERS:
        raise PairforgeError(f"--sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}.")
    given = {"--run": run, "--mask-run": mask_run, "--sdm-run": sdm_run}
    allowed = {
        "joint": {"--run"},
        "two-stage": {"--mask-run", "--sdm-run"},
        "paint": {"--sdm-run"},
    }.get(pipeline)
    if allowed is None:
        raise PairforgeError(f"--pipeline {pipeline!r} is unknown; use joint, two-stage or paint.")
    for flag, value in given.items():
        if value is not None and flag not in allowed:
            raise PairforgeError(
                f"{flag} does not apply to --pipeline {pipeline}; it takes {' and '.join(sorted(allowed))}."
            )
        if value is None and flag in allowed:
            raise PairforgeError(f"--pipeline {pipeline} needs {flag} RUN.")

    state = PartialState(cpu=device == "cpu")
    target = torch.device(device) if device else state.device
    roles = {"joint": run, "mask": mask_run, "sdm": sdm_run, "sr": sr}
    runs = {}
    for role, path in roles.items():
        if path is None:
            continue
        loaded = load_run(path, device=target)
        if loaded.task != role:
            flag = "--sr" if role == "sr" else {"joint": "--run"}.get(role, f"--{role}-run")
            raise PairforgeError(
                f"{flag} {path}: this run has task {loaded.task!r}, not {role!r}; pass a run "
                f"trained with task: {role}."
            )
        runs[role] = RunRef(loaded, Path(path))

    if guidance is None:
        sdm_config = runs["sdm"].run.config if "sdm" in runs else None
        guidance = sdm_config.sdm.guidance_scale if sdm_config else DEFAULT_GUIDANCE_SCALE
    if sr_noise_level is None:
        sr_config = runs["sr"].run.config if "sr" in runs else None
        sr_noise_level = sr_config.sr.sample_noise_level if sr_config else DEFAULT_SR_NOISE_LEVEL

    if n is None:
        n = 16
        if pipeline == "paint" and masks is not None:
            from pairforge.data.dataset import load_dataset

            source = load_dataset(masks)
            n = max(1, sum(source.has_mask(i) for i in source.ids()))
    plan = GenerationPlan(
        pipeline=pipeline,
        runs=runs,
        num_samples=n,
        base_seed=seed,
        batch_size=batch_size,
        guidance_scale=guidance,
        sr_noise_level=sr_noise_level,
        mask_source=masks,
        sampling=SamplingSettings(
            sampler=sampler,
            steps=steps or DEFAULT_STEPS[sampler],
            device=target,
            dtype=torch.bfloat16
            if resolve_precision("bf16" if bf16 else precision, target.type) == "bf16"
            else torch.float32,
            progress=False,
        ),
    )
    if dry_run:
        if state.is_main_process:
            typer.echo(json.dumps({**generation_settings(plan), "n": n, "out": str(out)}, indent=2))
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
        done = manifest["generated_this_session"]
        line = (
            f"{out}: {manifest['num_samples']} pairs ({done['samples']} new, "
            f"{done['process_seconds']:.1f} process-s)"
        )
        if manifest.get("sr_mask_agreement_mean") is not None:
            line += f"; SR mask agreement {manifest['sr_mask_agreement_mean']:.4f}"
        typer.echo(line)
