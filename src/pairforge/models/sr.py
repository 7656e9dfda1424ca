"""Super-resolution U-Net: a denoiser conditioned on an upsampled low-res image + mask by concatenation.

Like improved-diffusion's SuperResModel: the low-res input is upsampled to the sample size inside
the model (bilinear for image channels, nearest for mask codec channels) and concatenated with the
noisy sample. Cascaded diffusion (Ho et al. 2021) noise-augments the low-res input; the model is
told the augmentation level, here as a second timestep-style embedding added to the time embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DModel, UNet2DOutput

from pairforge.errors import PairforgeError
from pairforge.models.conditions import block_layout, check_condition, per_sample

# The noise level in [0, 1] is embedded like a timestep on the same 0..1000 scale.
NOISE_LEVEL_SCALE = 1000.0


def upsample_low_res(
    low_res: torch.Tensor, size: tuple[int, int], image_channels: int
) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size): the first `image_channels` bilinear, the rest (mask codes) nearest."""
    image = F.interpolate(
        low_res[:, :image_channels], size=size, mode="bilinear", align_corners=False
    )
    if low_res.shape[1] == image_channels:
        return image
    mask_codes = F.interpolate(low_res[:, image_channels:], size=size, mode="nearest")
    return torch.cat([image, mask_codes], dim=1)


def noise_augment(
    low_res: torch.Tensor, noise_level: torch.Tensor | float, noise: torch.Tensor
) -> torch.Tensor:
    """Variance-preserving noise augmentation of the low-res condition (cascaded diffusion).

    low_res, noise (B, C, h, w); noise_level scalar or (B,) in [0, 1]:
    cos(pi/2 * level) * low_res + sin(pi/2 * level) * noise, so level 0 leaves low_res unchanged
    and level 1 is pure noise. Training draws a random level per sample; sampling uses a fixed one.
    """
    levels = torch.as_tensor(noise_level, device=low_res.device, dtype=low_res.dtype)
    levels = levels.reshape(-1, 1, 1, 1) if levels.ndim else levels
    angle = levels * (math.pi / 2)
    return torch.cos(angle) * low_res + torch.sin(angle) * noise


class SuperResUNet(ModelMixin, ConfigMixin):
    """Low-res-conditioned denoiser: `model(sample, timestep, low_res, noise_level).sample`.

    sample (B, in_channels, H, W) noisy high-res image (+ mask codes) in ~[-1, 1];
    timestep scalar or (B,) in [0, 1000); low_res (B, low_res_channels, h, w), any h, w (usually H/4),
    of which the first low_res_image_channels are image channels and the rest mask codec channels;
    noise_level scalar or (B,) in [0, 1], the augmentation level that was applied to low_res.
    Returns UNet2DOutput with .sample (B, out_channels, H, W).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int,
        in_channels: int,
        out_channels: int,
        low_res_channels: int,
        low_res_image_channels: int,
        block_out_channels: tuple[int, ...] = (64, 128, 128, 256),
        layers_per_block: int = 2,
        attention_levels: tuple[bool, ...] = (False, False, False, True),
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_head_dim: int = 8,
    ):
        super().__init__()
        block_out_channels, attention_levels = block_layout(
            "SuperResUNet", block_out_channels, attention_levels
        )
        if not 0 < low_res_image_channels <= low_res_channels:
            raise PairforgeError(
                f"SuperResUNet: low_res_image_channels={low_res_image_channels} must be in "
                f"1..low_res_channels={low_res_channels}."
            )
        down_types = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
        up_types = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
        # class_embed_type="timestep": the noise level gets its own sinusoidal embedding + MLP,
        # added to the timestep embedding in every resnet block.
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels + low_res_channels,
            out_channels=out_channels,
            down_block_types=down_types,
            up_block_types=up_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            class_embed_type="timestep",
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        low_res: torch.Tensor,
        noise_level: torch.Tensor | float,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict the noise (or v) for `sample` given the low-res condition; shapes above."""
        channels = self.config.low_res_channels
        check_condition(
            "SuperResUNet", "low_res", low_res, sample, channels, f"; pass (B, {channels}, h, w)"
        )
        condition = upsample_low_res(
            low_res.to(sample.dtype), tuple(sample.shape[-2:]), self.config.low_res_image_channels
        )
        levels = per_sample(noise_level, sample.shape[0], sample.device, torch.float32)
        levels = levels * NOISE_LEVEL_SCALE
        out = self.unet(torch.cat([sample, condition], dim=1), timestep, class_labels=levels).sample
        if not return_dict:
            return (out,)
        return UNet2DOutput(sample=out)
