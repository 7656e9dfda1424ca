"""Sampling from a model being trained or loaded: denoisers per task and sample grids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pairforge.train.tasks import TaskLayout, low_res_condition, segmap_from_mask, split_sample


def task_denoiser(
    layout: TaskLayout,
    model: torch.nn.Module,
    condition_batch: dict[str, torch.Tensor] | None = None,
    guidance_scale: float = 1.5,
    sr_noise_level: float = 0.2,
    sr_scale_factor: int = 4,
    channels_last: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """denoise_fn(x_t, t) for `diffusion.sampling.sample`, on the model's device.

    image / joint / mask: the model alone. sdm: classifier-free guidance (one batched pass) on
    condition_batch["mask"] (B, H, W). sr: condition_batch {"image", "mask"} at high resolution,
    downsampled by sr_scale_factor and noise-augmented at the fixed sr_noise_level (seed 0).
    """
    from pairforge.diffusion.guidance import classifier_free_batched

    device = next(model.parameters()).device

    def prepare(x_t: torch.Tensor) -> torch.Tensor:
        return x_t.contiguous(memory_format=torch.channels_last) if channels_last else x_t

    if layout.task == "sdm":
        segmap = segmap_from_mask(condition_batch["mask"], layout.num_classes).to(device)
        return classifier_free_batched(
            lambda x_t, t, c: model(prepare(x_t), t, c).sample,
            segmap,
            torch.zeros_like(segmap),
            guidance_scale,
        )
    if layout.task == "sr":
        from pairforge.models.sr import noise_augment

        low_res = low_res_condition(
            layout, condition_batch["image"], condition_batch["mask"], sr_scale_factor
        )
        noise = torch.randn(low_res.shape, generator=torch.Generator().manual_seed(0))
        level = torch.full((low_res.shape[0],), float(sr_noise_level))
        low_res = noise_augment(low_res, level, noise).to(device)
        level = level.to(device)
        return lambda x_t, t: model(prepare(x_t), t, low_res, level).sample
    return lambda x_t, t: model(prepare(x_t), t).sample


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

    if condition_batch is not None:
        condition_batch = {k: v[: len(seeds)] for k, v in condition_batch.items()}
    denoise = task_denoiser(
        layout, model, condition_batch, guidance_scale, sr_noise_level, sr_scale_factor
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
    images, masks = split_sample(layout, x0.cpu())
    if layout.task == "sdm":
        masks = condition_batch["mask"]
    return save_grid(path, images, masks, class_colors=class_colors, max_items=len(seeds))
