"""Preview grids of a model being trained: samples of every task, saved as a PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from pairforge.core.tasks import SamplingCondition, TaskLayout


def write_preview(
    path: Path,
    layout: TaskLayout,
    model: torch.nn.Module,
    scheduler_config: dict,
    seeds: list[int],
    sampler: str,
    steps: int,
    class_colors,
    condition_batch: dict[str, torch.Tensor] | None = None,
    bf16: bool = False,
    guidance_scale: float = 1.5,
    sr_noise_level: float = 0.2,
    sr_scale_factor: int = 4,
) -> Path:
    """Sample len(seeds) x0 with `model` and save them as a grid PNG at `path`.

    The grid (`pairforge.viz.save_grid`) has one row per seed: the image channels in model range
    (each scaled to its 1..99th percentile), then mask and overlay; mask runs show masks only.
    """
    from pairforge.diffusion.sampling import sample
    from pairforge.viz import save_grid

    condition = None
    if condition_batch is not None:
        condition = SamplingCondition(
            mask=condition_batch["mask"][: len(seeds)], image=condition_batch["image"][: len(seeds)]
        )
    task = layout.spec
    denoise = task.denoiser(
        layout,
        model,
        condition,
        guidance_scale=guidance_scale,
        sr_noise_level=sr_noise_level,
        sr_scale_factor=sr_scale_factor,
    )
    resolution = int(model.config.sample_size)
    was_training = model.training
    model.eval()
    x0 = sample(
        denoise,
        (layout.sample_channels, resolution, resolution),
        seeds,
        sampler,
        steps,
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
