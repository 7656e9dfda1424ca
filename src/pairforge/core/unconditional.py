"""Drawing samples from an unconditional run (task image, joint or mask): one seed, one sample.

`pairforge sample`, `pairforge generate --pipeline joint` (and the mask stage of two-stage) and
`pairforge seg autolabel` all draw through `draw_unconditional`, so the same run and seed give the
same sample in every command: sample seed s starts from the noise of
`core.seeds.stage_seed(s, task.stage)` (stage "image", "joint" or "mask"), whatever the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pairforge.core.run import layout_of
from pairforge.core.seeds import stage_seed
from pairforge.core.tasks import get_task
from pairforge.errors import PairforgeError


@dataclass
class SamplingSettings:
    """How to run the reverse process: sampler name, steps (None: the sampler's default),
    device (None: the model's), dtype (torch.bfloat16: bf16 autocast), progress bar."""

    sampler: str = "dpm++"
    steps: int | None = 25
    device: str | torch.device | None = None
    dtype: torch.dtype = torch.float32
    progress: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary for manifests."""
        return {"sampler": self.sampler, "steps": self.steps, "dtype": str(self.dtype)}

    def device_for(self, run) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return next(run.model.parameters()).device


@dataclass
class DrawnSamples:
    """images (B, C, H, W) float in the run's model space (None for mask runs); masks (B, H, W)
    int64 class indices decoded by the run's codec (None for image runs); on the device."""

    images: torch.Tensor | None
    masks: torch.Tensor | None


def sample_seeds(task_name: str, seeds: Sequence[int]) -> list[int]:
    """The noise seeds of samples `seeds` drawn from a run of `task_name`."""
    stage = get_task(task_name).stage
    return [stage_seed(int(s), stage) for s in seeds]


def draw_unconditional(run, seeds: Sequence[int], settings: SamplingSettings) -> DrawnSamples:
    """len(seeds) samples of an unconditional run (LoadedRun or alike), split into parts."""

    task = get_task(run.task)
    if not task.unconditional:
        raise PairforgeError(
            f"a {run.task!r} run needs a condition (mask or low-res image); use "
            "`pairforge generate` for sdm / sr runs."
        )
    layout = layout_of(run)
    return draw_with(run, task.denoiser(layout, run.model), seeds, settings)


def draw_with(run, denoiser, seeds: Sequence[int], settings: SamplingSettings) -> DrawnSamples:
    """len(seeds) samples of `run` from `denoiser` (eps/v of x_t, t), each with the noise of its
    seed in the run's stage (the same noise whatever the condition), split into parts."""
    from pairforge.diffusion.sampling import sample

    task, layout = get_task(run.task), layout_of(run)
    x0 = sample(
        denoiser,
        shape=(layout.sample_channels, run.resolution, run.resolution),
        seeds=sample_seeds(run.task, seeds),
        sampler=settings.sampler,
        steps=settings.steps,
        scheduler_config=run.scheduler_config,
        device=settings.device_for(run),
        dtype=settings.dtype,
        progress=settings.progress,
    )
    images, masks = task.split_sample(layout, x0.float())
    return DrawnSamples(images, masks)
