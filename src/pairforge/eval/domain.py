"""Domain features: pooled mid-block activations of a trained pairforge DDPM at a fixed timestep.

An extra FID row next to Inception, never instead of it. Its network must be a neutral
image-only DDPM (task image), not one of the compared generators nor any model trained on masks,
which would score samples like its own as closer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.core.features import block_features, fixed_noise, pool
from pairforge.core.tasks import TaskLayout, get_task
from pairforge.errors import PairforgeError

# The one task whose network may give domain features: it saw images only, and generates nothing
# that is compared (the joint, mask and SDM models are the generators or saw their masks).
NEUTRAL_DOMAIN_TASK = "image"


# Output of the middle of the U-Net, by model class: diffusers UNet2DModel, pairforge SemanticUNet.
MIDDLE_BLOCKS = ("mid_block", "mid_block2")


class DomainFeatureExtractor(torch.nn.Module):
    """Pooled activations of a trained pairforge denoiser at one fixed noise level.

    x0 (B, C_in, H, W) in the model range is noised to timestep `timestep` with one fixed,
    seeded noise tensor shared by every sample (so a sample's features do not depend on the
    batch), the denoiser runs up to `block` (default its middle: `mid_block` of a UNet2DModel,
    `mid_block2` of a SemanticUNet), and the block output is averaged over H, W: (B, D)
    float32, D = the block's width.

    Args:
        model: diffusers UNet2DModel (tasks image / joint / mask) or SemanticUNet (task sdm).
        scheduler_config: the run's scheduler config (for the noise schedule).
        task: the run's task; "sdm" passes the one-hot mask as segmap.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheduler_config: dict,
        *,
        task: str = "image",
        timestep: int = 100,
        seed: int = 0,
        block: str | None = None,
    ):
        super().__init__()
        from diffusers import DDPMScheduler

        if block is None:  # UNet2DModel: mid_block; SemanticUNet: its last middle SPADE block
            names = [
                n for n in MIDDLE_BLOCKS if isinstance(getattr(model, n, None), torch.nn.Module)
            ]
            block = names[0] if names else MIDDLE_BLOCKS[0]

        if not get_task(task).domain_features:
            raise PairforgeError(
                f"domain features: run task {task!r} is not supported; use a run of task "
                "image, joint, mask or sdm"
            )
        if not isinstance(getattr(model, block, None), torch.nn.Module):
            raise PairforgeError(
                f"domain features: the model ({type(model).__name__}) has no block {block!r}"
            )
        self.model = model.eval()
        self.task, self.timestep, self.seed, self.block = task, int(timestep), int(seed), block
        self.scheduler = DDPMScheduler.from_config(dict(scheduler_config))
        num_steps = self.scheduler.config.num_train_timesteps
        if not 0 <= self.timestep < num_steps:
            raise PairforgeError(
                f"--domain-timestep {timestep}: must be in [0, {num_steps - 1}] for this run"
            )

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, segmap: torch.Tensor | None = None) -> torch.Tensor:
        x0 = x0.float()
        noise = fixed_noise(self.seed, (1, *x0.shape[1:])).expand_as(x0)
        timesteps = torch.full((x0.shape[0],), self.timestep, dtype=torch.long)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        extra = {} if segmap is None else {"segmap": segmap}  # sdm: the mask condition
        try:
            outputs = block_features(
                self.model, noisy, timesteps, [self.block], stop_early=True, model_kwargs=extra
            )
        except PairforgeError:
            raise PairforgeError(f"domain features: block {self.block!r} was never run") from None
        return pool(outputs[self.block], "mean")

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, allow_any_task: bool = False, **kwargs
    ) -> tuple[DomainFeatureExtractor, object]:
        """Build from a run directory via `pairforge.core.run.load_run`; returns (extractor, run).

        Only an image-only DDPM (task "image") is accepted unless `allow_any_task`: a joint,
        mask or SDM network is one of the compared generators (or saw the masks), and its
        features favour samples like its own. The check runs before the weights are built.
        """
        from pairforge.core.run import load_run, read_task_name

        task = read_task_name(run_dir)
        if task is not None:
            check_domain_task(run_dir, task, allow_any_task)
        run = load_run(run_dir)
        check_domain_task(run_dir, run.task, allow_any_task)
        return cls(run.model, run.scheduler_config, task=run.task, **kwargs), run


def check_domain_task(run_dir: str | Path, task: str, allow_any_task: bool = False) -> None:
    """PairforgeError unless `task` is the neutral image-only task (or `allow_any_task`)."""
    if not get_task(task).needs_masks or allow_any_task:
        return
    raise PairforgeError(
        f"--domain-run {run_dir}: the run's task is {task!r}; domain-feature FID needs a neutral "
        f"image-only DDPM (task {NEUTRAL_DOMAIN_TASK!r}), because a {task} network is one of the "
        "compared generators or was trained on masks, and favours samples like its own. Train "
        "one (e.g. `pairforge train demo-image --set data.path=DATA --out runs/image`) and pass "
        "--domain-run runs/image, or pass --domain-any-task to use this run anyway"
    )


def domain_model_inputs(evalset, run) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model input (N, C_in, R, R) for `run` built from an EvalSet, plus segmap for sdm.

    Image channels are re-normalized with the run's normalizer; masks (needed by joint, mask and
    sdm runs: only labeled samples are used then) are encoded with the run's codec. Sizes are
    matched to `run.resolution` (area for images, nearest for masks).
    """
    task = get_task(run.task)
    needs_mask = task.needs_masks
    rows = evalset.labeled if needs_mask else np.arange(evalset.num_images)
    if needs_mask and evalset.masks is None:
        raise PairforgeError(
            f"{evalset.source}: domain features of a {task.name} run need masks, but no sample is "
            "labeled"
        )
    images = torch.from_numpy(run.normalizer.encode(evalset.physical(rows)))
    masks = torch.from_numpy(evalset.masks) if needs_mask else None
    resolution = int(run.resolution)
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="area")
        if masks is not None:
            masks = F.interpolate(masks[:, None].float(), size=(resolution,) * 2, mode="nearest")
            masks = masks[:, 0].long()
    num_classes = run.codec.num_classes if run.codec is not None else len(evalset.class_names)
    layout = TaskLayout(task.name, images.shape[1], run.codec, num_classes)
    x0, extra = task.evaluation_inputs(layout, images, masks)
    return x0, extra.get("segmap")
