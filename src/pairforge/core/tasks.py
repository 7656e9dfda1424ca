"""What each task diffuses, as one object per task (image, joint, mask, sdm, sr).

A task object owns everything that differs between tasks: the x0 channel layout, the model
class and its construction arguments, the training inputs built from a batch, the denoiser for
sampling (with the one classifier-free guidance wrapper) and the model inputs of an evaluation
set. Code outside this module asks the task object, never compares task names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pairforge.core.task_inputs import (  # noqa: F401  (re-exported: the tasks' helpers)
    channels_last_input,
    guided_denoiser,
    low_res_condition,
    segmap_from_mask,
)
from pairforge.data.codec import IGNORE_INDEX, MaskCodec
from pairforge.errors import PairforgeError

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TaskLayout:
    """Channel layout of the diffused sample x0 = cat(image, codec(mask)) (either part optional).

    task:           the task name ("image" | "joint" | "mask" | "sdm" | "sr").
    image_channels: channels of the image part (0 for the mask task).
    codec:          the mask codec for the mask part, None if the sample has no mask part.
    num_classes:    mask classes (0 when the dataset declares none).
    """

    task: str
    image_channels: int
    codec: MaskCodec | None
    num_classes: int

    @property
    def spec(self) -> Task:
        """The task object of `task`."""
        return get_task(self.task)

    @property
    def mask_channels(self) -> int:
        return self.codec.channels if self.codec is not None and self.has_mask_part else 0

    @property
    def has_image_part(self) -> bool:
        return self.spec.has_image_part

    @property
    def has_mask_part(self) -> bool:
        return self.spec.has_mask_part

    @property
    def sample_channels(self) -> int:
        """Channels of x0 (= model in/out channels)."""
        return (self.image_channels if self.has_image_part else 0) + self.mask_channels

    @property
    def low_res_channels(self) -> int:
        """Channels of the sr low-res condition: image + mask codes."""
        return self.image_channels + (self.codec.channels if self.codec else 0)


@dataclass(frozen=True)
class TrainingSettings:
    """The task-specific training knobs: sdm classifier-free drop rate, sr augmentation,
    fraction_drop_prob: drop rate of the class-fraction condition (None: not conditioned)."""

    cond_drop_prob: float = 0.2
    noise_aug_max: float = 0.3
    scale_factor: int = 4
    fraction_drop_prob: float | None = None

    def for_model(self, model: torch.nn.Module) -> TrainingSettings:
        """These settings with the fraction drop rate of a fraction-conditioned `model`."""
        from dataclasses import replace

        from pairforge.core.task_fractions import is_fraction_model

        if not is_fraction_model(model):
            return self
        return replace(self, fraction_drop_prob=model.drop_prob)


@dataclass(frozen=True)
class SamplingCondition:
    """What a conditional task samples from, at the model's resolution (on the CPU).

    mask:  (B, H, W) class indices (sdm: the masks to paint; sr: the high-res masks of the
           preview batch), image: (B, C, H, W) in ~[-1, 1] (sr preview only).
    seeds: the B sample seeds (sr: sample b's augmentation noise comes from
           stage_seed(seeds[b], "sr-augment"), as in the pipeline); None: 0 .. B-1.
    fractions: (B, K) target class fractions (rows sum to 1) of a fraction-conditioned mask /
           joint run; None: unconditional (the null condition).
    """

    mask: torch.Tensor | None = None
    image: torch.Tensor | None = None
    seeds: tuple[int, ...] | None = None
    fractions: torch.Tensor | None = None


class Task:
    """One task: its layout, model, training inputs, sampling denoiser and evaluation inputs.

    Class attributes say what the task is:
    name:            the task name in configs and pairforge.json.
    model_class:     the denoiser class recorded in pairforge.json.
    needs_masks:     training items must carry a mask (the network sees labels).
    has_image_part / has_mask_part: what x0 holds.
    unconditional:   samples need no condition (`pairforge sample` works).
    feature_source:  usable as the frozen DDPM of the few-label head (image / joint).
    domain_features: usable by the domain-feature FID row.
    stage:           the seed stream its samples' noise comes from (`core.seeds.stage_seed`).
    fraction_conditioning: may be conditioned on class fractions (model.fraction_conditioning).
    """

    name: ClassVar[str]
    model_class: ClassVar[str] = "UNet2DModel"
    needs_masks: ClassVar[bool] = True
    has_image_part: ClassVar[bool] = True
    has_mask_part: ClassVar[bool] = True
    unconditional: ClassVar[bool] = True
    feature_source: ClassVar[bool] = False
    domain_features: ClassVar[bool] = True
    stage: ClassVar[str]
    fraction_conditioning: ClassVar[bool] = False

    def make_layout(self, image_channels: int, num_classes: int, codec_kind: str) -> TaskLayout:
        """The layout; the codec exists whenever the dataset declares >= 2 classes."""
        codec = MaskCodec(num_classes, codec_kind) if num_classes >= 2 else None
        return TaskLayout(self.name, image_channels, codec, num_classes)

    def model_kwargs(self, layout: TaskLayout) -> dict[str, Any]:
        """Keyword arguments of `model_class` beyond the preset's (num_classes, low_res_...)."""
        return {}

    def encode(self, layout: TaskLayout, image: torch.Tensor | None, mask: torch.Tensor | None):
        """x0 (B, sample_channels, H, W) from an image in ~[-1, 1] and class-index masks."""
        codes = layout.codec.encode(mask) if self.has_mask_part else None
        if not self.has_image_part:
            return codes
        return image if codes is None else torch.cat([image, codes], dim=1)

    def training_inputs(
        self,
        layout: TaskLayout,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
        settings: TrainingSettings,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x0 and the model's extra keyword inputs for one batch (see `training_inputs`)."""
        return self.encode(layout, batch.get("image"), batch.get("mask")), {}

    def denoiser(
        self,
        layout: TaskLayout,
        model: torch.nn.Module,
        condition: SamplingCondition | None = None,
        *,
        guidance_scale: float = 1.5,
        sr_noise_level: float = 0.2,
        sr_scale_factor: int = 4,
        channels_last: bool = False,
    ) -> DenoiseFn:
        """denoise_fn(x_t, t) for `diffusion.sampling.sample`; unconditional tasks: the model."""
        return lambda x_t, t: model(channels_last_input(x_t, channels_last), t).sample

    def split_sample(self, layout: TaskLayout, x: torch.Tensor):
        """Model-space sample (B, sample_channels, H, W) -> (image (B, C, H, W) or None,
        mask (B, H, W) int64 class indices or None), masks decoded by the codec."""
        image = x[:, : layout.image_channels] if self.has_image_part else None
        mask = None
        if self.has_mask_part:
            start = layout.image_channels if self.has_image_part else 0
            mask = layout.codec.decode(x[:, start : start + layout.mask_channels])
        return image, mask

    def evaluation_inputs(
        self, layout: TaskLayout, images: torch.Tensor, masks: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Model input x0 (N, C_in, R, R) and extra keyword inputs for an evaluation set.

        images (N, C, R, R) in the run's normalization; masks (N, R, R) class indices with
        IGNORE_INDEX for unlabeled pixels (needed when `needs_masks`).
        """
        clean = None
        if masks is not None:
            clean = torch.where(masks != IGNORE_INDEX, masks, torch.zeros_like(masks))
        return self.encode(layout, images, clean), {}

    def check_config(self, config) -> None:
        """Task-specific consistency of a TrainConfig; raise ValueError naming the keys."""
        if config.model.fraction_conditioning and not self.fraction_conditioning:
            raise ValueError(
                f"model.fraction_conditioning=true applies to the mask and joint tasks, not "
                f"task={self.name!r}; set model.fraction_conditioning=false"
            )

    def record_settings(self, config) -> dict[str, Any]:
        """The run record's task settings: {"sdm": SDMConfig dict or None, "sr": ...}, plus
        "fraction_conditioning" {drop_prob, guidance} for a fraction-conditioned run."""
        from pairforge.core.task_fractions import record_entry

        return {"sdm": None, "sr": None, **record_entry(config)}


class FractionTask(Task):
    """A mask-generating UNet2DModel task that can be conditioned on class fractions."""

    fraction_conditioning = True

    def model_kwargs(self, layout: TaskLayout) -> dict[str, Any]:
        # Used by models.factory.build_model only with model.fraction_conditioning.
        return {"fraction_classes": layout.num_classes}

    def training_inputs(self, layout, batch, generator, settings):
        x0, extra = super().training_inputs(layout, batch, generator, settings)
        if settings.fraction_drop_prob is None:
            return x0, extra
        from pairforge.core.task_fractions import training_condition

        drop = settings.fraction_drop_prob
        return x0, training_condition(batch["mask"], layout.num_classes, generator, drop)

    def denoiser(
        self, layout, model, condition=None, *, guidance_scale=2.0, channels_last=False, **_
    ):
        if condition is None or condition.fractions is None:
            return super().denoiser(layout, model, channels_last=channels_last)
        from pairforge.core.task_fractions import guided_fraction_denoiser

        return guided_fraction_denoiser(model, condition.fractions, guidance_scale, channels_last)


class ImageTask(Task):
    name = "image"
    stage = "image"
    needs_masks = False
    has_mask_part = False
    feature_source = True


class JointTask(FractionTask):
    name = "joint"
    stage = "joint"
    feature_source = True


class MaskTask(FractionTask):
    name = "mask"
    stage = "mask"
    has_image_part = False


class SdmTask(Task):
    """Mask-conditioned image model (SemanticUNet), classifier-free guidance."""

    name = "sdm"
    stage = "image"  # two-stage: the image stage, painted on the mask stage's masks
    model_class = "SemanticUNet"
    has_mask_part = False
    unconditional = False

    def model_kwargs(self, layout: TaskLayout) -> dict[str, Any]:
        if not layout.num_classes:
            raise PairforgeError("task 'sdm' needs num_classes (the mask classes).")
        return {"num_classes": layout.num_classes}

    def record_settings(self, config) -> dict[str, Any]:
        return {"sdm": config.sdm.model_dump(), "sr": None}

    def training_inputs(self, layout, batch, generator, settings):
        mask = batch["mask"]
        segmap = segmap_from_mask(mask, layout.num_classes)
        keep = torch.rand(mask.shape[0], generator=generator) >= settings.cond_drop_prob
        return batch["image"], {"segmap": segmap * keep.view(-1, 1, 1, 1)}

    def denoiser(
        self, layout, model, condition=None, *, guidance_scale=1.5, channels_last=False, **_
    ):
        device = next(model.parameters()).device
        segmap = segmap_from_mask(condition.mask, layout.num_classes).to(device)
        return guided_denoiser(model, segmap, guidance_scale, channels_last)

    def evaluation_inputs(self, layout, images, masks):
        valid = masks != IGNORE_INDEX
        clean = torch.where(valid, masks, torch.zeros_like(masks))
        segmap = torch.nn.functional.one_hot(clean, layout.num_classes).permute(0, 3, 1, 2)
        return images, {"segmap": segmap.float() * valid[:, None]}


class SrTask(Task):
    """4x super-resolution conditioned on the noise-augmented low-res pair."""

    name = "sr"
    stage = "sr"
    model_class = "SuperResUNet"
    unconditional = False
    domain_features = False

    def model_kwargs(self, layout: TaskLayout) -> dict[str, Any]:
        return {
            "low_res_channels": layout.low_res_channels,
            "low_res_image_channels": layout.image_channels,
        }

    def training_inputs(self, layout, batch, generator, settings):
        from pairforge.models.sr import noise_augment

        image, mask = batch["image"], batch["mask"]
        low_res = low_res_condition(layout, image, mask, settings.scale_factor)
        level = torch.rand(mask.shape[0], generator=generator) * settings.noise_aug_max
        noise = torch.randn(low_res.shape, generator=generator)
        x0 = self.encode(layout, image, mask)
        return x0, {"low_res": noise_augment(low_res, level, noise), "noise_level": level}

    def denoiser(
        self, layout, model, condition=None, *, sr_noise_level=0.2, sr_scale_factor=4,
        channels_last=False, **_,
    ):  # fmt: skip
        """Preview denoiser: the condition's high-res pair, downsampled and noise-augmented at
        the fixed sr_noise_level with each sample's own noise (`augmented_low_res`, the rule of
        the pipelines, which pass their per-sample low_res to `low_res_denoiser`)."""
        device = next(model.parameters()).device
        low_res = low_res_condition(layout, condition.image, condition.mask, sr_scale_factor)
        seeds = condition.seeds if condition.seeds is not None else range(low_res.shape[0])
        low_res, levels = self.augmented_low_res(low_res.to(device), seeds, sr_noise_level)
        return self.low_res_denoiser(model, low_res, levels, channels_last)

    @staticmethod
    def augmented_low_res(
        low_res: torch.Tensor, seeds, noise_level: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampling condition: low_res (B, C+codec, h, w) noise-augmented at the fixed
        noise_level in [0, 1], sample b's noise drawn from stage_seed(seeds[b], "sr-augment")
        alone (whatever the batch). Returns (augmented low_res, levels (B,) float32)."""
        from pairforge.core.seeds import seeded_normal, stage_seed
        from pairforge.models.sr import noise_augment

        noise_seeds = [stage_seed(int(s), "sr-augment") for s in seeds]
        noise = seeded_normal(noise_seeds, tuple(low_res.shape[1:]), low_res.device, low_res.dtype)
        levels = torch.full((len(noise_seeds),), float(noise_level), device=low_res.device)
        return noise_augment(low_res, noise_level, noise), levels

    @staticmethod
    def low_res_denoiser(model, low_res, levels, channels_last: bool = False) -> DenoiseFn:
        """denoise_fn for an already noise-augmented low_res (B, C+codec, h, w) at `levels`."""
        return lambda x_t, t: (
            model(channels_last_input(x_t, channels_last), t, low_res, levels).sample
        )

    def record_settings(self, config) -> dict[str, Any]:
        return {"sdm": None, "sr": config.sr.model_dump()}

    def check_config(self, config) -> None:
        super().check_config(config)
        if config.data.resolution % config.sr.scale_factor:
            raise ValueError(
                f"data.resolution {config.data.resolution} is not divisible by "
                f"sr.scale_factor {config.sr.scale_factor}"
            )


TASKS: dict[str, Task] = {
    task.name: task for task in (ImageTask(), JointTask(), MaskTask(), SdmTask(), SrTask())
}
TASK_NAMES = tuple(TASKS)


def get_task(name: str) -> Task:
    """The task object called `name`; PairforgeError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise PairforgeError(f"task={name!r} is unknown; use one of {', '.join(TASKS)}.") from None


def make_layout(task: str, image_channels: int, num_classes: int, codec_kind: str) -> TaskLayout:
    """The layout for `task`; the codec exists whenever the dataset declares >= 2 classes."""
    return get_task(task).make_layout(image_channels, num_classes, codec_kind)


def split_sample(layout: TaskLayout, x: torch.Tensor):
    """Model-space sample -> (image or None, decoded mask or None); see Task.split_sample."""
    return layout.spec.split_sample(layout, x)


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
    settings = TrainingSettings(cond_drop_prob, noise_aug_max, scale_factor)
    return layout.spec.training_inputs(layout, batch, generator, settings)
