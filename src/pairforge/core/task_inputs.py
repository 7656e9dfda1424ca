"""Sampling and training helpers of the conditioned tasks (sdm segmaps, sr low-res inputs),
re-exported by `core.tasks`."""

from __future__ import annotations

from collections.abc import Callable

import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def channels_last_input(x_t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x_t.contiguous(memory_format=torch.channels_last) if channels_last else x_t


def segmap_from_mask(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class indices -> (B, K, H, W) one-hot in {0, 1}; ignore pixels (>= K) get zeros."""
    valid = (mask >= 0) & (mask < num_classes)
    onehot = torch.nn.functional.one_hot(torch.where(valid, mask, 0), num_classes)
    return (onehot * valid.unsqueeze(-1)).movedim(-1, -3).float()


def guided_denoiser(
    model: torch.nn.Module, segmap: torch.Tensor, guidance_scale: float, channels_last: bool = False
) -> DenoiseFn:
    """Classifier-free guidance for a SemanticUNet: out_u + s (out_c - out_u), one batched pass.

    segmap (B, K, H, W) one-hot; the unconditional prediction uses an all-zero segmap.
    s = 0 gives the unconditional, s = 1 the conditional prediction.
    """
    from pairforge.diffusion.guidance import classifier_free_batched

    return classifier_free_batched(
        lambda x_t, t, c: model(channels_last_input(x_t, channels_last), t, c).sample,
        segmap,
        torch.zeros_like(segmap),
        guidance_scale,
    )


def low_res_condition(layout, image_hr, mask_hr, scale_factor: int) -> torch.Tensor:
    """The sr condition at resolution / scale_factor: cat(area-downsampled image, codec of the
    majority-downsampled mask), (B, low_res_channels, h, w), before noise augmentation."""
    from pairforge.data.views import downsample_image, downsample_mask

    image_lr = downsample_image(image_hr, scale_factor)
    mask_lr = downsample_mask(mask_hr, scale_factor, layout.num_classes)
    return torch.cat([image_lr, layout.codec.encode(mask_lr).to(image_lr.dtype)], dim=1)
