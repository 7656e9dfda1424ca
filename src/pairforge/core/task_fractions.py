"""Class-fraction conditioning of the mask and joint tasks: training condition, guided denoiser.

`core.tasks` (MaskTask, JointTask) calls these when a run is fraction-conditioned
(model.fraction_conditioning, `models.fractions.FractionConditionedUNet`): training computes each
crop's class fractions at model resolution and drops the condition with probability drop_prob;
sampling guides towards target fractions with classifier-free guidance against the null
condition (eps = eps_null + w (eps_cond - eps_null), `diffusion.guidance`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def is_fraction_model(model: torch.nn.Module) -> bool:
    """Whether `model` (unwrapped) is fraction-conditioned."""
    from pairforge.models.fractions import FractionConditionedUNet

    return isinstance(model, FractionConditionedUNet)


def record_entry(config) -> dict:
    """{"fraction_conditioning": {drop_prob, guidance, condition}} of pairforge.json for a
    fraction-conditioned TrainConfig, else {}."""
    if not config.model.fraction_conditioning:
        return {}
    return {
        "fraction_conditioning": {
            "drop_prob": config.model.fraction_drop_prob,
            "guidance": config.model.fraction_guidance,
            "condition": "per-class pixel fractions of the training crop's mask at model "
            "resolution, unlabeled pixels excluded",
        }
    }


def training_condition(
    mask: torch.Tensor, num_classes: int, generator: torch.Generator, drop_prob: float
) -> dict[str, torch.Tensor]:
    """{"fractions": (B, K + 1)} for masks (B, H, W) at model resolution: the crop's class
    fractions over its labeled pixels (IGNORE_INDEX excluded), dropped (all zeros) with
    probability drop_prob and always for a crop without labeled pixels. One draw of (B,)
    uniforms from `generator`, so a step stays a function of its seed."""
    from pairforge.models.fractions import fraction_condition, mask_fractions

    fractions, labeled = mask_fractions(mask, num_classes)
    keep = (torch.rand(mask.shape[0], generator=generator) >= drop_prob) & labeled
    return {"fractions": fraction_condition(fractions, keep)}


def guided_fraction_denoiser(
    model: torch.nn.Module,
    targets: torch.Tensor,
    guidance_scale: float,
    channels_last: bool = False,
) -> DenoiseFn:
    """Classifier-free guidance towards targets (B, K) (rows summing to 1): one batched pass of
    2B with the conditions cat(targets, 1) and the null condition (zeros); scale 0 = null
    (unconditional), 1 = conditional."""
    from pairforge.diffusion.guidance import classifier_free_batched
    from pairforge.models.fractions import fraction_condition

    device = next(model.parameters()).device
    condition = fraction_condition(targets.float()).to(device)

    def model_fn(x_t, t, c):
        if channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return model(x_t, t, fractions=c).sample

    return classifier_free_batched(model_fn, condition, torch.zeros_like(condition), guidance_scale)
