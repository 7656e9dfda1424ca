"""Preview grids of a model being trained: samples of every task, saved as a PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from pairforge.config import TrainConfig
from pairforge.core.tasks import SamplingCondition, TaskLayout


def write_preview(
    path: Path,
    layout: TaskLayout,
    model: torch.nn.Module,
    scheduler_config: dict,
    config: TrainConfig,
    class_colors,
    condition_batch: dict[str, torch.Tensor] | None = None,
    bf16: bool = False,
) -> Path:
    """Sample config.log.num_samples x0 (seeds 0, 1, ...) with `model` and save them as a grid
    PNG at `path`; sampler and steps from config.log, guidance from config.sdm, the sr condition
    from config.sr (sr: each seed's own augmentation noise, as in `generate`). condition_batch:
    {"image", "mask"} preview conditions of sdm / sr runs.

    The grid (`pairforge.viz.save_grid`) has one row per seed: the image channels in model range
    (each scaled to its 1..99th percentile), then mask and overlay; mask runs show masks only.
    """
    from pairforge.diffusion.sampling import sample
    from pairforge.viz import save_grid

    seeds = list(range(config.log.num_samples))
    condition = None
    if condition_batch is not None:
        condition = SamplingCondition(
            mask=condition_batch["mask"][: len(seeds)],
            image=condition_batch["image"][: len(seeds)],
            seeds=tuple(seeds),
        )
    task = layout.spec
    denoise = task.denoiser(
        layout,
        model,
        condition,
        guidance_scale=config.sdm.guidance_scale,
        sr_noise_level=config.sr.sample_noise_level,
        sr_scale_factor=config.sr.scale_factor,
    )
    resolution = int(model.config.sample_size)
    was_training = model.training
    model.eval()
    x0 = sample(
        denoise,
        (layout.sample_channels, resolution, resolution),
        seeds,
        config.log.sampler,
        config.log.sample_steps,
        scheduler_config,
        device=next(model.parameters()).device,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        progress=False,
    )
    model.train(was_training)
    images, masks = task.split_sample(layout, x0.cpu())
    if masks is None and condition is not None:
        masks = condition.mask  # sdm: the masks it painted
    return save_grid(path, images, masks, class_colors=class_colors, max_items=len(seeds))
