"""Writes generated pairs as a standard pairforge dataset with manifest.json; resumable and sharded.

The plan (pipeline, runs, seeds, sampling) becomes a `core.dataset_writer.SampledDataset` and is
written by `core.dataset_writer.write_sampled_dataset`, the writer of `pairforge sample` and
`seg autolabel` too. Layout of OUT: the dataset (dataset.yaml, images/, masks/), manifest.json
(settings, checkpoint hashes, one record per sample), grid.png, and .generate/ (settings.json and
one record file per finished sample). Sample i has id `gen{i:06d}` and seed `base_seed + i`;
process r of R takes the indices i with i % R == r, so any process count gives the same dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.core.dataset_writer import (
    DrawnBatch,
    SampledDataset,
    checkpoint_entry,
    write_sampled_dataset,
)
from pairforge.core.dataset_writer import output_spec as run_output_spec
from pairforge.errors import PairforgeError
from pairforge.generate.pipelines import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_SR_NOISE_LEVEL,
    GeneratedPairs,
    SamplingSettings,
    generate_joint,
    generate_two_stage,
    mask_agreement,
    paint_images,
    super_resolve,
)

PIPELINES = ("joint", "two-stage", "paint")
# The first-stage runs each pipeline takes, and the flag that names each role.
PIPELINE_ROLES = {"joint": ("joint",), "two-stage": ("mask", "sdm"), "paint": ("sdm",)}
ROLE_FLAGS = {"joint": "--run", "mask": "--mask-run", "sdm": "--sdm-run"}
ID_FORMAT = "gen{index:06d}"


def check_pipeline_runs(pipeline: str, given: Mapping[str, Any]) -> None:
    """Raise unless `given` {role: run or path or None} names exactly the first-stage runs of
    `pipeline` (joint: --run; two-stage: --mask-run and --sdm-run; paint: --sdm-run); "sr" is
    optional in every pipeline."""
    roles = PIPELINE_ROLES.get(pipeline)
    if roles is None:
        raise PairforgeError(
            f"--pipeline {pipeline!r} is unknown; use one of {', '.join(PIPELINES)}."
        )
    takes = " and ".join(sorted(ROLE_FLAGS[role] for role in roles))
    for role, flag in ROLE_FLAGS.items():
        present = given.get(role) is not None
        if present and role not in roles:
            raise PairforgeError(
                f"{flag} does not apply to --pipeline {pipeline}; it takes {takes}."
            )
        if not present and role in roles:
            raise PairforgeError(f"--pipeline {pipeline} needs {flag} RUN.")


@dataclass
class RunRef:
    """A loaded run (`pairforge.core.run.LoadedRun` or alike) and the folder it came from."""

    run: Any
    path: Path | None = None


@dataclass
class GenerationPlan:
    """Everything that decides the generated samples (plus batch size, which does not).

    pipeline "joint" needs runs["joint"]; "two-stage" needs runs["mask"] and runs["sdm"];
    "paint" needs runs["sdm"] and `mask_source`, a dataset whose labeled masks (e.g. drawn by a
    user) get images: sample i paints labeled mask i % (number of labeled masks).
    runs["sr"] optional for a 4x super-resolution stage at the fixed `sr_noise_level`.
    """

    pipeline: str
    runs: dict[str, RunRef]
    num_samples: int
    base_seed: int = 0
    batch_size: int = 8
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    sr_noise_level: float = DEFAULT_SR_NOISE_LEVEL
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    mask_source: Path | None = None
    fractions: Any = None  # generate.fractions.FractionTargets of a conditioned run, or None

    def __post_init__(self) -> None:
        check_pipeline_runs(self.pipeline, self.runs)
        if (self.pipeline == "paint") != (self.mask_source is not None):
            raise PairforgeError(
                "--masks DATASET goes with --pipeline paint (and paint needs it); "
                f"got --pipeline {self.pipeline} with --masks {self.mask_source}."
            )
        if self.fractions is not None and self.pipeline == "paint":
            raise PairforgeError(
                "--fractions / --fractions-from / --oversample steer the mask DDPM of --pipeline "
                "joint or two-stage; paint takes its masks from --masks."
            )
        if self.num_samples < 1 or self.batch_size < 1:
            raise PairforgeError(
                f"--n {self.num_samples} / --batch-size {self.batch_size}: both must be >= 1."
            )

    @property
    def first_stage_run(self):
        """The run whose pairs the optional SR stage refines (joint, else the SDM run)."""
        return self.runs["joint" if self.pipeline == "joint" else "sdm"].run

    @property
    def final_run(self):
        """The run whose normalizer and spec describe the written images."""
        return self.runs["sr"].run if "sr" in self.runs else self.first_stage_run


def sample_id(index: int) -> str:
    return ID_FORMAT.format(index=index)


def generation_settings(plan: GenerationPlan) -> dict[str, Any]:
    """The settings that decide sample content; a resumed run must match them exactly."""
    settings: dict[str, Any] = {
        "pipeline": plan.pipeline,
        "checkpoints": {
            role: checkpoint_entry(ref.run, ref.path) for role, ref in sorted(plan.runs.items())
        },
        **plan.sampling.as_dict(),
        "base_seed": plan.base_seed,
        "guidance_scale": plan.guidance_scale if plan.pipeline != "joint" else None,
        "sr": None,
    }
    if plan.fractions is not None:  # only then: older outputs keep resuming
        settings["fractions"] = plan.fractions.to_dict()
    if plan.mask_source is not None:
        settings["mask_source"] = str(Path(plan.mask_source).resolve())
    if "sr" in plan.runs:
        settings["sr"] = {
            "noise_level": plan.sr_noise_level,
            "low_resolution": plan.first_stage_run.resolution,
            "resolution": plan.runs["sr"].run.resolution,
        }
    return settings


def generate_pairs(
    plan: GenerationPlan, seeds: Sequence[int], masks: np.ndarray | None = None
) -> tuple[GeneratedPairs, list[dict[str, Any]]]:
    """Run the plan's pipeline for `seeds` (paint: for `masks` (B, H, W) class indices);
    returns the final pairs and per-sample extras."""
    runs = {role: ref.run for role, ref in plan.runs.items()}
    targets = plan.fractions.for_seeds(seeds) if plan.fractions is not None else None
    steer = {"fractions": targets}
    if targets is not None:
        steer["fraction_guidance"] = plan.fractions.guidance
    if plan.pipeline == "paint":
        pairs = paint_images(runs["sdm"], masks, seeds, plan.guidance_scale, plan.sampling)
    elif plan.pipeline == "joint":
        pairs = generate_joint(runs["joint"], seeds, plan.sampling, **steer)
    else:
        pairs = generate_two_stage(
            runs["mask"], runs["sdm"], seeds, plan.guidance_scale, plan.sampling, **steer
        )
    extras: list[dict[str, Any]] = [{} for _ in seeds]
    if targets is not None:
        _add_fractions(extras, targets, pairs, plan.fractions.names)
    if "sr" in runs:
        low_res_masks = pairs.masks
        pairs = super_resolve(runs["sr"], pairs, seeds, plan.sr_noise_level, plan.sampling)
        agreement = mask_agreement(pairs.masks, low_res_masks, pairs.num_classes)
        for extra, value in zip(extras, agreement.per_sample_agreement, strict=True):
            extra["sr_mask_agreement"] = value
    return pairs, extras


def _add_fractions(extras, targets, pairs: GeneratedPairs, names) -> None:
    """Per-sample records: target and achieved class fractions (of the model-resolution mask)."""
    from pairforge.generate.fractions import achieved_fractions

    achieved = achieved_fractions(pairs.masks, pairs.num_classes)
    for extra, target, got in zip(extras, targets.tolist(), achieved, strict=True):
        extra["target_fractions"] = dict(zip(names, (round(v, 6) for v in target), strict=True))
        extra["fractions"] = dict(zip(names, (round(float(v), 6) for v in got), strict=True))


def _fraction_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Manifest keys of a steered set: mean absolute error of achieved vs target per class."""
    rows = [r for r in records if "target_fractions" in r]
    if not rows:
        return {}
    names = list(rows[0]["target_fractions"])
    error = {
        n: float(np.mean([abs(r["fractions"][n] - r["target_fractions"][n]) for r in rows]))
        for n in names
    }
    return {"fraction_mean_abs_error": error}


class MaskSource:
    """The labeled masks of plan.mask_source, in id order; index i -> mask i % count."""

    def __init__(self, plan: GenerationPlan):
        from pairforge.data.dataset import load_dataset

        self.dataset = load_dataset(plan.mask_source)
        self.ids = [i for i in self.dataset.ids() if self.dataset.has_mask(i)]
        if not self.ids:
            raise PairforgeError(f"--masks {plan.mask_source}: the dataset has no labeled masks.")
        theirs = [(c.id, c.name) for c in self.dataset.spec.classes]
        ours = [(c.id, c.name) for c in plan.runs["sdm"].run.spec.classes]
        if theirs != ours:
            raise PairforgeError(
                f"--masks {plan.mask_source}: classes {theirs} differ from the SDM run's {ours}; "
                "declare the same class ids and names in its dataset.yaml."
            )
        self._shapes: dict[int, tuple[int, ...]] = {}

    def source_id(self, index: int) -> str:
        return self.ids[index % len(self.ids)]

    def mask(self, index: int) -> np.ndarray:
        return self.dataset.read_mask(self.source_id(index))

    def shape(self, index: int) -> tuple[int, ...]:
        slot = index % len(self.ids)
        if slot not in self._shapes:
            self._shapes[slot] = self.mask(index).shape
        return self._shapes[slot]

    def batches(self, todo: list[int], batch_size: int) -> list[list[int]]:
        """Consecutive chunks of at most batch_size indices whose masks have one shape."""
        batches: list[list[int]] = []
        for index in todo:
            if batches and len(batches[-1]) < batch_size:
                if self.shape(batches[-1][0]) == self.shape(index):
                    batches[-1].append(index)
                    continue
            batches.append([index])
        return batches


def output_spec(plan: GenerationPlan):
    """DatasetSpec of the generated dataset: channels/classes of the final run, its normalization."""
    run = plan.final_run
    suffix = "-sr" if "sr" in plan.runs else ""
    return run_output_spec(run, f"{run.spec.name}-generated-{plan.pipeline}{suffix}")


def _draw_pairs(plan: GenerationPlan, source: MaskSource | None) -> Callable[..., DrawnBatch]:
    """draw(indices, seeds) for the writer: the plan's pairs in physical units (+ extras)."""

    def draw(indices: list[int], seeds: list[int]) -> DrawnBatch:
        given_masks = np.stack([source.mask(i) for i in indices]) if source else None
        pairs, extras = generate_pairs(plan, seeds, given_masks)
        if source:
            for extra, index in zip(extras, indices, strict=True):
                extra["mask_source_id"] = source.source_id(index)
        return DrawnBatch(pairs.physical_images(), pairs.masks_numpy(), extras)

    return draw


def _sr_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    values = [r["sr_mask_agreement"] for r in records if "sr_mask_agreement" in r]
    return {"sr_mask_agreement_mean": float(np.mean(values)) if values else None}


def _summary(plan: GenerationPlan):
    """summarize(records) of the writer: SR agreement and / or fraction errors, or None."""
    parts = [
        f for f, on in ((_sr_summary, "sr" in plan.runs), (_fraction_summary, plan.fractions)) if on
    ]
    if not parts:
        return None
    return lambda records: {k: v for part in parts for k, v in part(records).items()}


def write_generated_dataset(
    plan: GenerationPlan, out: str | Path, **options: Any
) -> dict[str, Any] | None:
    """Generate plan.num_samples pairs into `out` with `core.dataset_writer.write_sampled_dataset`
    (options: its process_index, num_processes, barrier, progress): resumed when the settings
    match, extended by a larger num_samples, refused for a smaller one than on disk; every
    process calls it, the main one (index 0) returns the manifest, the others None."""
    source = MaskSource(plan) if plan.pipeline == "paint" else None
    job = SampledDataset(
        spec=output_spec(plan),
        settings=generation_settings(plan),
        num_samples=plan.num_samples,
        draw=_draw_pairs(plan, source),
        base_seed=plan.base_seed,
        batch_size=plan.batch_size,
        id_format=ID_FORMAT,
        summarize=_summary(plan),
    )
    if source is not None:
        job.batches = source.batches
    return write_sampled_dataset(job, out, **options)
