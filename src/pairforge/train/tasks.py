"""What each task diffuses: the x0 channel layout and the conditioning inputs, built from batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pairforge.data.codec import MaskCodec

# Tasks whose training items must carry a mask.
TASKS_NEEDING_MASKS = ("joint", "mask", "sdm", "sr")


@dataclass(frozen=True)
class TaskLayout:
    """Channel layout of the diffused sample x0 = cat(image, codec(mask)) (either part optional).

    image_channels: channels of the image part (0 for the mask task).
    codec:          the mask codec for the mask part, None if the sample has no mask part.
    num_classes:    mask classes (0 when the dataset declares none).
    """

    task: str
    image_channels: int
    codec: MaskCodec | None
    num_classes: int

    @property
    def mask_channels(self) -> int:
        return self.codec.channels if self.codec is not None and self.has_mask_part else 0

    @property
    def has_image_part(self) -> bool:
        return self.task != "mask"

    @property
    def has_mask_part(self) -> bool:
        return self.task in ("joint", "mask", "sr")

    @property
    def sample_channels(self) -> int:
        """Channels of x0 (= model in/out channels)."""
        return (self.image_channels if self.has_image_part else 0) + self.mask_channels

    @property
    def low_res_channels(self) -> int:
        """Channels of the sr low-res condition: image + mask codes."""
        return self.image_channels + (self.codec.channels if self.codec else 0)


def make_layout(task: str, image_channels: int, num_classes: int, codec_kind: str) -> TaskLayout:
    """The layout for `task`; the codec exists whenever the dataset declares >= 2 classes."""
    codec = MaskCodec(num_classes, codec_kind) if num_classes >= 2 else None
    return TaskLayout(task, image_channels, codec, num_classes)


def split_sample(layout: TaskLayout, x: torch.Tensor):
    """Model-space sample (B, sample_channels, H, W) -> (image (B, C, H, W) in ~[-1, 1] or None,
    mask (B, H, W) int64 class indices or None), masks decoded by the codec (argmax / bits)."""
    image = x[:, : layout.image_channels] if layout.has_image_part else None
    mask = None
    if layout.has_mask_part:
        start = layout.image_channels if layout.has_image_part else 0
        mask = layout.codec.decode(x[:, start : start + layout.mask_channels])
    return image, mask


def segmap_from_mask(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class indices -> (B, K, H, W) one-hot in {0, 1}; ignore pixels (>= K) get zeros."""
    valid = (mask >= 0) & (mask < num_classes)
    onehot = torch.nn.functional.one_hot(torch.where(valid, mask, 0), num_classes)
    return (onehot * valid.unsqueeze(-1)).movedim(-1, -3).float()


def low_res_condition(layout: TaskLayout, image_hr, mask_hr, scale_factor: int) -> torch.Tensor:
    """The sr condition at resolution / scale_factor: cat(area-downsampled image, codec of the
    majority-downsampled mask), (B, low_res_channels, h, w), before noise augmentation."""
    from pairforge.data.views import downsample_image, downsample_mask

    image_lr = downsample_image(image_hr, scale_factor)
    mask_lr = downsample_mask(mask_hr, scale_factor, layout.num_classes)
    return torch.cat([image_lr, layout.codec.encode(mask_lr).to(image_lr.dtype)], dim=1)


def training_inputs(
    layout: TaskLayout,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    cond_drop_prob: float = 0.2,
    noise_aug_max: float = 0.3,
    scale_factor: int = 4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x0 (B, sample_channels, H, W) and the model's extra keyword inputs for one batch.

    batch: {"image": (B, C, H, W) in ~[-1, 1], "mask": (B, H, W) int64}; tensors on the CPU.
    sdm: {"segmap": one-hot, zeroed per sample with probability cond_drop_prob}.
    sr:  {"low_res": noise-augmented condition, "noise_level": (B,) ~ U[0, noise_aug_max]}.
    Randomness comes from `generator` only, so a step is reproducible from its seed.
    """
    task = layout.task
    image = batch["image"]
    if task == "image":
        return image, {}
    mask = batch["mask"]
    if task == "mask":
        return layout.codec.encode(mask), {}
    if task == "joint":
        return torch.cat([image, layout.codec.encode(mask)], dim=1), {}
    if task == "sdm":
        segmap = segmap_from_mask(mask, layout.num_classes)
        keep = torch.rand(mask.shape[0], generator=generator) >= cond_drop_prob
        return image, {"segmap": segmap * keep.view(-1, 1, 1, 1)}
    if task == "sr":
        from pairforge.models.sr import noise_augment

        low_res = low_res_condition(layout, image, mask, scale_factor)
        level = torch.rand(mask.shape[0], generator=generator) * noise_aug_max
        noise = torch.randn(low_res.shape, generator=generator)
        x0 = torch.cat([image, layout.codec.encode(mask)], dim=1)
        return x0, {"low_res": noise_augment(low_res, level, noise), "noise_level": level}
    raise ValueError(f"unknown task {task!r}")
