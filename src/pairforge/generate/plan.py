"""From `pairforge generate` options to a GenerationPlan: flag checks, run loading, defaults."""

from __future__ import annotations

from pathlib import Path

import torch

from pairforge.errors import PairforgeError
from pairforge.generate.writer import GenerationPlan, RunRef, check_pipeline_runs

DEFAULT_NUM_SAMPLES = 16


def role_flag(role: str) -> str:
    """The CLI flag that names the run of `role` (joint, mask, sdm, sr)."""
    return {"joint": "--run", "sr": "--sr"}.get(role, f"--{role}-run")


def load_role_runs(paths: dict[str, Path | None], device: torch.device) -> dict[str, RunRef]:
    """Load every given run {role: path or None} onto `device`; each must have the task of its
    role (PairforgeError naming the flag otherwise)."""
    from pairforge.core.run import load_run

    runs = {}
    for role, path in paths.items():
        if path is None:
            continue
        loaded = load_run(path, device=device)
        if loaded.task != role:
            raise PairforgeError(
                f"{role_flag(role)} {path}: this run has task {loaded.task!r}, not {role!r}; "
                f"pass a run trained with task: {role}."
            )
        runs[role] = RunRef(loaded, Path(path))
    return runs


def default_num_samples(pipeline: str, masks: Path | None) -> int:
    """--n default: 16; paint: one pair per labeled mask of --masks."""
    if pipeline != "paint" or masks is None:
        return DEFAULT_NUM_SAMPLES
    from pairforge.data.dataset import load_dataset

    source = load_dataset(masks)
    return max(1, sum(source.has_mask(i) for i in source.ids()))


def build_plan(
    *,
    pipeline: str,
    paths: dict[str, Path | None],
    device: torch.device,
    masks: Path | None = None,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    sampler: str = "dpm++",
    steps: int | None = None,
    guidance: float | None = None,
    sr_noise_level: float | None = None,
    precision: str = "fp32",
    fractions: str | None = None,
    fractions_from: str | None = None,
    oversample: str | None = None,
    fraction_guidance: float | None = None,
) -> GenerationPlan:
    """The plan of `pairforge generate`: paths {joint, mask, sdm, sr: run folder or None}.

    Checks the sampler and the pipeline's run flags before loading anything. Defaults: guidance
    from the SDM run's config (else 1.5), the SR noise level from the SR run's config (else
    0.2), steps the sampler's default, bf16 when `precision` resolves to it on `device`.
    fractions / fractions_from / oversample / fraction_guidance: the targets of a
    fraction-conditioned joint or mask run (`generate.fractions.build_targets`).
    """
    from pairforge.diffusion.sampling import DEFAULT_STEPS, SAMPLERS
    from pairforge.generate.pipelines import (
        DEFAULT_GUIDANCE_SCALE,
        DEFAULT_SR_NOISE_LEVEL,
        SamplingSettings,
    )
    from pairforge.precision import resolve_precision

    if sampler not in SAMPLERS:
        raise PairforgeError(f"--sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}.")
    check_pipeline_runs(pipeline, paths)
    runs = load_role_runs(paths, device)
    if guidance is None:
        sdm_config = runs["sdm"].run.config if "sdm" in runs else None
        guidance = sdm_config.sdm.guidance_scale if sdm_config else DEFAULT_GUIDANCE_SCALE
    if sr_noise_level is None:
        sr_config = runs["sr"].run.config if "sr" in runs else None
        sr_noise_level = sr_config.sr.sample_noise_level if sr_config else DEFAULT_SR_NOISE_LEVEL
    targets = _fraction_targets(
        pipeline, runs, paths, fractions, fractions_from, oversample, fraction_guidance
    )
    bf16 = resolve_precision(precision, device.type) == "bf16"
    sampling = SamplingSettings(
        sampler=sampler,
        steps=steps or DEFAULT_STEPS[sampler],
        device=device,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        progress=False,
    )
    return GenerationPlan(
        pipeline=pipeline,
        runs=runs,
        num_samples=n if n is not None else default_num_samples(pipeline, masks),
        base_seed=seed,
        batch_size=batch_size,
        guidance_scale=guidance,
        sr_noise_level=sr_noise_level,
        mask_source=masks,
        sampling=sampling,
        fractions=targets,
    )


def _fraction_targets(pipeline, runs, paths, fractions, fractions_from, oversample, guidance):
    """The FractionTargets of the steering flags (None without them); paint has no mask DDPM."""
    from pairforge.generate.fractions import build_targets

    if fractions is None and fractions_from is None and oversample is None:
        return None
    role = next((r for r in ("joint", "mask") if r in runs), None)
    if role is None:
        raise PairforgeError(
            f"--fractions / --fractions-from / --oversample steer the mask DDPM of --pipeline "
            f"joint or two-stage, not --pipeline {pipeline}."
        )
    flag = f"{role_flag(role)} {paths[role]}"
    return build_targets(runs[role].run, flag, fractions, fractions_from, oversample, guidance)
