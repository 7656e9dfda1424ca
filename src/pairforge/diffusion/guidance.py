"""Classifier-free guidance by wrapping denoisers: eps = eps_u + s (eps_c - eps_u)."""

from __future__ import annotations

from collections.abc import Callable

import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_free(cond_fn: DenoiseFn, uncond_fn: DenoiseFn, scale: float) -> DenoiseFn:
    """A denoise_fn(x_t, t) combining a conditional and an unconditional denoiser.

    out = out_u + scale * (out_c - out_u): scale 0 -> unconditional only, 1 -> conditional only
    (one model call each); other scales call both. Works for eps and for v outputs (both are
    affine in eps at fixed x_t). Prefer `classifier_free_batched` when both share one network.
    """
    if scale == 0:
        return uncond_fn
    if scale == 1:
        return cond_fn

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_u = uncond_fn(x_t, t)
        return out_u + scale * (cond_fn(x_t, t) - out_u)

    return guided


def classifier_free_batched(
    model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    condition: torch.Tensor,
    null_condition: torch.Tensor,
    scale: float,
) -> DenoiseFn:
    """Classifier-free guidance in ONE forward pass of a batch twice the size.

    model_fn(x_t (B,...), t (B,), condition (B,...)) -> output (B,...), e.g.
    `lambda x, t, c: sdm(x, t, c).sample`; condition / null_condition: (B, ...) tensors
    (for the SDM: one-hot segmap and zeros). Scale 0 or 1 needs a single pass of size B.
    """
    if scale == 0:
        return lambda x_t, t: model_fn(x_t, t, null_condition)
    if scale == 1:
        return lambda x_t, t: model_fn(x_t, t, condition)
    both_conditions = torch.cat([condition, null_condition])

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), both_conditions).chunk(2)
        return out_u + scale * (out_c - out_u)

    return guided
