"""Semantic Diffusion Model U-Net: a denoiser whose decoder is conditioned on a one-hot mask via SPADE.

Wang et al. 2022, "Semantic Image Synthesis via Diffusion Models": the encoder sees only the noisy
image; the middle and decoder blocks normalize features with a parameter-free group norm and
modulate them per pixel with a scale and shift predicted from the mask resized to the feature size.
An all-zero mask is the "no mask" input used for classifier-free guidance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.models.upsampling import Upsample2D
from torch import nn

from pairforge.errors import PairforgeError
from pairforge.models.conditions import block_layout, check_condition, per_sample


class SpadeGroupNorm(nn.Module):
    """Group norm without affine parameters, then a per-pixel scale and shift predicted from the mask.

    h = norm(h) * (1 + gamma(m)) + beta(m), with m the mask resized (nearest) to h's spatial size.
    """

    def __init__(self, channels: int, num_classes: int, num_groups: int, hidden_channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, affine=False, eps=1e-6)
        self.mask_features = nn.Sequential(
            nn.Conv2d(num_classes, hidden_channels, kernel_size=3, padding=1), nn.SiLU()
        )
        self.to_gamma = nn.Conv2d(hidden_channels, channels, kernel_size=3, padding=1)
        self.to_beta = nn.Conv2d(hidden_channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        """hidden (B, C, h, w); segmap (B, K, H, W) in {0, 1} -> (B, C, h, w)."""
        mask = F.interpolate(segmap.to(hidden.dtype), size=hidden.shape[-2:], mode="nearest")
        features = self.mask_features(mask)
        return self.norm(hidden) * (1 + self.to_gamma(features)) + self.to_beta(features)


class SpadeResnetBlock(nn.Module):
    """Residual block whose two norms are SPADE norms; the timestep embedding is added between the convs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_classes: int,
        num_groups: int,
        spade_hidden_channels: int,
        dropout: float,
    ):
        super().__init__()
        self.norm1 = SpadeGroupNorm(in_channels, num_classes, num_groups, spade_hidden_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = SpadeGroupNorm(out_channels, num_classes, num_groups, spade_hidden_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, h, w), temb (B, T), segmap (B, K, H, W) -> (B, C_out, h, w)."""
        hidden = self.conv1(F.silu(self.norm1(x, segmap)))
        hidden = hidden + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        hidden = self.conv2(self.dropout(F.silu(self.norm2(hidden, segmap))))
        return self.shortcut(x) + hidden


def _self_attention(channels: int, head_dim: int, num_groups: int) -> Attention:
    """Spatial self-attention with its own group norm and residual, as in diffusers' attention blocks."""
    return Attention(
        channels,
        heads=max(1, channels // head_dim),
        dim_head=head_dim,
        eps=1e-6,
        norm_num_groups=num_groups,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )


def _check_widths(block_out_channels, norm_num_groups: int, num_classes: int) -> None:
    bad_widths = [c for c in block_out_channels if c % norm_num_groups]
    if bad_widths:
        raise PairforgeError(
            f"SemanticUNet: block_out_channels {bad_widths} are not divisible by "
            f"norm_num_groups={norm_num_groups}; use multiples of it or a smaller group count."
        )
    if num_classes < 1:
        raise PairforgeError(f"SemanticUNet: num_classes={num_classes}; it must be >= 1.")


class SemanticUNet(ModelMixin, ConfigMixin):
    """Mask-conditioned denoiser: `model(sample, timestep, segmap).sample`.

    sample (B, in_channels, H, W) noisy image in ~[-1, 1]; timestep scalar or (B,) in [0, 1000);
    segmap (B, num_classes, H, W) one-hot in {0, 1}, all zeros for "unconditional".
    Returns UNet2DOutput with .sample (B, out_channels, H, W) (eps or v, whatever it was trained on).
    H and W must be divisible by 2 ** (len(block_out_channels) - 1).
    spade_hidden_channels: width of the mask feature conv in each SPADE norm; None = min(128,
    2 * block_out_channels[0]).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        block_out_channels: tuple[int, ...] = (64, 128, 128),
        layers_per_block: int = 2,
        attention_levels: tuple[bool, ...] = (False, True, True),
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_head_dim: int = 8,
        spade_hidden_channels: int | None = None,
    ):
        super().__init__()
        block_out_channels, attention_levels = block_layout(
            "SemanticUNet", block_out_channels, attention_levels
        )
        _check_widths(block_out_channels, norm_num_groups, num_classes)
        groups = norm_num_groups
        base = block_out_channels[0]
        if spade_hidden_channels is None:
            # SDM uses 128; narrower models get 2x their first width (SPADE convs run at full
            # feature resolution and would otherwise dominate the cost of a small U-Net).
            spade_hidden_channels = min(128, 2 * base)
        temb_channels = base * 4
        self.time_proj = Timesteps(base, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(base, temb_channels)
        self.conv_in = nn.Conv2d(in_channels, base, kernel_size=3, padding=1)

        def spade_block(cin: int, cout: int) -> SpadeResnetBlock:
            return SpadeResnetBlock(
                cin, cout, temb_channels, num_classes, groups, spade_hidden_channels, dropout
            )

        def attention(width: int, level: int) -> nn.Module:
            if attention_levels[level]:
                return _self_attention(width, attention_head_dim, groups)
            return nn.Identity()

        # Encoder: plain resnet blocks; it never sees the mask. Record every skip's width.
        def resnet_block(cin: int, cout: int) -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=cin, out_channels=cout, temb_channels=temb_channels,
                dropout=dropout, groups=groups, eps=1e-6,
            )  # fmt: skip

        skip_channels = self._build_encoder(
            block_out_channels, layers_per_block, resnet_block, attention
        )
        channels = block_out_channels[-1]

        # Middle: SPADE block, attention, SPADE block.
        self.mid_block1 = spade_block(channels, channels)
        self.mid_attention = _self_attention(channels, attention_head_dim, groups)
        self.mid_block2 = spade_block(channels, channels)

        # Decoder: SPADE blocks on [hidden, skip], consuming skips in reverse order.
        self._build_decoder(
            block_out_channels, layers_per_block, skip_channels, spade_block, attention
        )
        channels = block_out_channels[0]
        self.norm_out = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def _build_encoder(self, widths, layers_per_block, resnet_block, attention) -> list[int]:
        """down_resnets / down_attentions / downsamplers; returns the skip widths, in order."""
        self.down_resnets = nn.ModuleList()
        self.down_attentions = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [widths[0]]
        channels = widths[0]
        for level, width in enumerate(widths):
            resnets, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(layers_per_block):
                resnets.append(resnet_block(channels, width))
                channels = width
                attentions.append(attention(width, level))
                skip_channels.append(width)
            self.down_resnets.append(resnets)
            self.down_attentions.append(attentions)
            if level == len(widths) - 1:
                self.downsamplers.append(nn.Identity())
            else:
                self.downsamplers.append(Downsample2D(width, use_conv=True, padding=1, name="op"))
                skip_channels.append(width)
        return skip_channels

    def _build_decoder(self, widths, layers_per_block, skip_channels, spade_block, attention):
        """up_resnets / up_attentions / upsamplers, popping `skip_channels` from the end."""
        self.up_resnets = nn.ModuleList()
        self.up_attentions = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        channels = widths[-1]
        for level in reversed(range(len(widths))):
            width = widths[level]
            resnets, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(layers_per_block + 1):
                resnets.append(spade_block(channels + skip_channels.pop(), width))
                channels = width
                attentions.append(attention(width, level))
            self.up_resnets.append(resnets)
            self.up_attentions.append(attentions)
            self.upsamplers.append(Upsample2D(width, use_conv=True) if level > 0 else nn.Identity())

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        segmap: torch.Tensor,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict the noise (or v) for `sample` at `timestep` given the mask `segmap`; shapes above."""
        classes = self.config.num_classes
        check_condition(
            "SemanticUNet", "segmap", segmap, sample, classes,
            f" with num_classes={classes}; pass a (B, {classes}, H, W) one-hot mask",
        )  # fmt: skip
        timesteps = per_sample(timestep, sample.shape[0], sample.device)
        # Timesteps returns float32; match the model dtype before the MLP.
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        segmap = segmap.to(sample.dtype)

        hidden = self.conv_in(sample)
        skips = [hidden]
        for resnets, attentions, downsampler in zip(
            self.down_resnets, self.down_attentions, self.downsamplers, strict=True
        ):
            for resnet, attention in zip(resnets, attentions, strict=True):
                hidden = attention(resnet(hidden, temb))
                skips.append(hidden)
            if not isinstance(downsampler, nn.Identity):
                hidden = downsampler(hidden)
                skips.append(hidden)

        hidden = self.mid_block1(hidden, temb, segmap)
        hidden = self.mid_attention(hidden)
        hidden = self.mid_block2(hidden, temb, segmap)

        for resnets, attentions, upsampler in zip(
            self.up_resnets, self.up_attentions, self.upsamplers, strict=True
        ):
            for resnet, attention in zip(resnets, attentions, strict=True):
                hidden = resnet(torch.cat([hidden, skips.pop()], dim=1), temb, segmap)
                hidden = attention(hidden)
            hidden = upsampler(hidden)

        out = self.conv_out(F.silu(self.norm_out(hidden)))
        if not return_dict:
            return (out,)
        return UNet2DOutput(sample=out)
