"""Pair generators: joint, two-stage (mask DDPM -> SDM) and the optional 4x super-resolution stage.

Every function takes one seed per sample; a sample depends only on its own seed (each stage draws
its noise from a generator seeded by `stage_seed(seed, stage)`), so the same seed gives the same
pair whatever the batch size. Tensors stay in model space ([-1, 1] image channels, class-index
masks); `GeneratedPairs.physical_images()` converts images to physical units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pairforge.core.run import layout_of, require_task
from pairforge.core.seeds import stage_seed
from pairforge.core.tasks import DenoiseFn, SrTask, guided_denoiser, segmap_from_mask
from pairforge.core.unconditional import SamplingSettings, draw_unconditional
from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.normalize import ChannelNormalizer
from pairforge.errors import PairforgeError

DEFAULT_GUIDANCE_SCALE = 1.5
DEFAULT_SR_NOISE_LEVEL = 0.2


@dataclass
class GeneratedPairs:
    """A batch of generated pairs.

    images (B, C, H, W) float in model space of `normalizer` (~[-1, 1]); masks (B, H, W) int64
    class indices 0..K-1; num_classes K.
    """

    images: torch.Tensor
    masks: torch.Tensor
    normalizer: ChannelNormalizer
    num_classes: int

    def physical_images(self) -> np.ndarray:
        """(B, C, H, W) float32 numpy in the physical units of the training data."""
        return self.normalizer.decode(self.images.detach().float().cpu().numpy())

    def masks_numpy(self) -> np.ndarray:
        """(B, H, W) int64 numpy class indices."""
        return self.masks.detach().cpu().numpy().astype(np.int64)


@dataclass
class MaskAgreement:
    """How well a high-res mask, majority-downsampled, matches its low-res input.

    pixel_agreement in [0, 1]: fraction of equal pixels; miou in [0, 1]: mean IoU over the classes
    present in either mask (NaN-free); per_sample_agreement (B,).
    """

    pixel_agreement: float
    miou: float
    per_sample_agreement: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pixel_agreement": self.pixel_agreement,
            "miou": self.miou,
            "per_sample_agreement": self.per_sample_agreement,
        }


def _image_channels(run) -> int:
    return run.spec.num_channels


def _run_sampler(
    run, denoise_fn: DenoiseFn, shape, seeds, settings: SamplingSettings, device
) -> torch.Tensor:
    from pairforge.diffusion.sampling import sample

    return sample(
        denoise_fn,
        shape=tuple(shape),
        seeds=[int(s) for s in seeds],
        sampler=settings.sampler,
        steps=settings.steps,
        scheduler_config=run.scheduler_config,
        device=device,
        dtype=settings.dtype,
        progress=settings.progress,
    )


def mask_to_segmap(
    masks: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """(B, H, W) class indices -> (B, K, H, W) one-hot in {0, 1}; ignore pixels get all zeros."""
    masks = masks.long()
    valid = masks != ignore_index
    bad = masks[valid & ((masks < 0) | (masks >= num_classes))]
    if bad.numel():
        raise PairforgeError(
            f"mask holds class index {int(bad[0])} outside 0..{num_classes - 1}; the SDM run "
            f"knows {num_classes} classes (use {ignore_index} for unlabeled pixels)."
        )
    # The training conversion, so painting conditions exactly as training did; -1 = ignore.
    return segmap_from_mask(torch.where(valid, masks, -1), num_classes)


def _draw(run, seeds, settings, fractions, fraction_guidance):
    """draw_unconditional, or the guided draw towards fractions (B, K) of a conditioned run."""
    if fractions is None:
        return draw_unconditional(run, seeds, settings)
    from pairforge.generate.fractions import draw_with_fractions

    return draw_with_fractions(run, seeds, fractions, fraction_guidance, settings)


def generate_joint(
    run,
    seeds: Sequence[int],
    settings: SamplingSettings | None = None,
    fractions: torch.Tensor | None = None,
    fraction_guidance: float = 2.0,
) -> GeneratedPairs:
    """One DDPM over image + mask codec channels (task "joint"); masks decoded with the run's codec.
    fractions (B, K): targets of a fraction-conditioned run (guidance scale fraction_guidance)."""
    settings = settings or SamplingSettings()
    require_task(run, "joint", "joint pipeline")
    drawn = _draw(run, seeds, settings, fractions, fraction_guidance)
    return GeneratedPairs(
        images=drawn.images,
        masks=drawn.masks,
        normalizer=run.normalizer,
        num_classes=run.codec.num_classes,
    )


def generate_masks(
    mask_run,
    seeds: Sequence[int],
    settings: SamplingSettings | None = None,
    fractions: torch.Tensor | None = None,
    fraction_guidance: float = 2.0,
) -> torch.Tensor:
    """Stage 1 of two-stage: (B, H, W) int64 class indices from a mask DDPM (unconditional, or
    guided towards target fractions (B, K) when the run is fraction-conditioned)."""
    settings = settings or SamplingSettings()
    require_task(mask_run, "mask", "two-stage mask stage")
    return _draw(mask_run, seeds, settings, fractions, fraction_guidance).masks


def paint_images(
    sdm_run,
    masks: torch.Tensor | np.ndarray,
    seeds: Sequence[int],
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    settings: SamplingSettings | None = None,
) -> GeneratedPairs:
    """Stage 2 of two-stage, also for user-drawn masks: images for given masks with the SDM.

    masks (B, H, W) class indices 0..K-1 (255 = unlabeled: unconditional there), usually H = W =
    the run's resolution; any H, W divisible by the U-Net's downsampling factor work, at the run's
    pixel scale. One seed per mask. Returns the pairs with the masks as given.
    """
    settings = settings or SamplingSettings()
    require_task(sdm_run, "sdm", "two-stage image stage")
    masks = torch.as_tensor(masks).long()
    # The U-Net is convolutional: any size divisible by its total downsampling factor works, at
    # the pixel scale the run was trained on (crop_size / resolution source pixels per pixel).
    multiple = 2 ** (len(sdm_run.model.config.block_out_channels) - 1)
    if (
        masks.ndim != 3
        or len(masks) != len(seeds)
        or masks.shape[1] % multiple
        or masks.shape[2] % multiple
    ):
        raise PairforgeError(
            f"paint_images: masks of shape {tuple(masks.shape)} with {len(seeds)} seeds; the SDM "
            f"run needs (B, H, W) masks with H and W multiples of {multiple} (it was trained at "
            f"{sdm_run.resolution} px) and one seed per mask; crop or pad the masks."
        )
    num_classes = sdm_run.model.config.num_classes
    device = settings.device_for(sdm_run)
    segmap = mask_to_segmap(masks, num_classes).to(device)
    shape = (_image_channels(sdm_run), masks.shape[1], masks.shape[2])
    image_seeds = [stage_seed(s, "image") for s in seeds]
    denoise = guided_denoiser(sdm_run.model, segmap, guidance_scale)
    x0 = _run_sampler(sdm_run, denoise, shape, image_seeds, settings, device)
    return GeneratedPairs(
        images=x0.float(), masks=masks, normalizer=sdm_run.normalizer, num_classes=num_classes
    )


def generate_two_stage(
    mask_run,
    sdm_run,
    seeds: Sequence[int],
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    settings: SamplingSettings | None = None,
    fractions: torch.Tensor | None = None,
    fraction_guidance: float = 2.0,
) -> GeneratedPairs:
    """Mask DDPM -> decoded masks -> SDM with classifier-free guidance `guidance_scale`
    (fractions (B, K): the mask stage's targets, see `generate_masks`)."""
    settings = settings or SamplingSettings()
    num_classes = sdm_run.model.config.num_classes
    if mask_run.codec.num_classes != num_classes or mask_run.resolution != sdm_run.resolution:
        raise PairforgeError(
            f"two-stage: the mask run makes {mask_run.codec.num_classes}-class masks at "
            f"{mask_run.resolution} px but the SDM run expects {num_classes} classes at "
            f"{sdm_run.resolution} px; train both on the same dataset and resolution."
        )
    masks = generate_masks(mask_run, seeds, settings, fractions, fraction_guidance)
    return paint_images(sdm_run, masks, seeds, guidance_scale, settings)


def super_resolve(
    sr_run,
    pairs: GeneratedPairs,
    seeds: Sequence[int],
    noise_level: float = DEFAULT_SR_NOISE_LEVEL,
    settings: SamplingSettings | None = None,
) -> GeneratedPairs:
    """Low-res pairs -> high-res pairs (task "sr", usually 4x) at a fixed augmentation level.

    The low-res image is moved into the SR run's normalization, the mask encoded with its codec,
    both noise-augmented with `noise_level` in [0, 1] (noise from the sample's own seed).
    """
    settings = settings or SamplingSettings()
    require_task(sr_run, "sr", "super-resolution stage")
    if not 0 <= noise_level <= 1:
        raise PairforgeError(f"--sr-noise-level {noise_level} is outside [0, 1]; 0.1-0.3 is usual.")
    if sr_run.codec.num_classes != pairs.num_classes:
        raise PairforgeError(
            f"super-resolution: the SR run knows {sr_run.codec.num_classes} classes but the pairs "
            f"have {pairs.num_classes}; train the SR run on the same dataset."
        )
    config = sr_run.config
    if config is not None and pairs.images.shape[-1] * config.sr.scale_factor != sr_run.resolution:
        raise PairforgeError(
            f"super-resolution: the SR run turns {sr_run.resolution // config.sr.scale_factor} px "
            f"into {sr_run.resolution} px, but the pairs are {pairs.images.shape[-1]} px; train the "
            "SR run with data.resolution = scale_factor x the first stage's resolution."
        )
    device = settings.device_for(sr_run)
    physical = pairs.normalizer.decode(pairs.images.float())
    low_res = torch.cat(
        [sr_run.normalizer.encode(physical), sr_run.codec.encode(pairs.masks.cpu()).to(physical)],
        dim=1,
    ).to(device=device, dtype=torch.float32)
    expected = sr_run.model.config.low_res_channels
    if low_res.shape[1] != expected:
        raise PairforgeError(
            f"super-resolution: the pairs give {low_res.shape[1]} low-res channels but the SR "
            f"run expects {expected}; train the SR run on the same dataset."
        )
    low_res, levels = SrTask.augmented_low_res(low_res, seeds, noise_level)
    denoise = SrTask.low_res_denoiser(sr_run.model, low_res, levels)
    layout = layout_of(sr_run)
    shape = (layout.sample_channels, sr_run.resolution, sr_run.resolution)
    x0 = _run_sampler(
        sr_run, denoise, shape, [stage_seed(s, "sr") for s in seeds], settings, device
    )
    images, masks = layout.spec.split_sample(layout, x0.float())
    return GeneratedPairs(
        images=images,
        masks=masks,
        normalizer=sr_run.normalizer,
        num_classes=sr_run.codec.num_classes,
    )


def mask_agreement(
    high_res_masks: torch.Tensor | np.ndarray,
    low_res_masks: torch.Tensor | np.ndarray,
    num_classes: int,
) -> MaskAgreement:
    """Majority-downsample (B, H, W) high-res masks to the (B, h, w) low-res size and compare."""
    from pairforge.core.metrics import confusion_matrix, present_class_miou
    from pairforge.data.views import downsample_mask

    high = torch.as_tensor(np.asarray(high_res_masks)).long()
    low = torch.as_tensor(np.asarray(low_res_masks)).long()
    factor = high.shape[-1] / low.shape[-1]
    down = downsample_mask(high, factor, num_classes)
    if down.shape != low.shape:
        raise PairforgeError(
            f"mask_agreement: high-res masks {tuple(high.shape)} do not downsample to the "
            f"low-res shape {tuple(low.shape)}; sizes must differ by an integer factor."
        )
    per_sample = (down == low).float().flatten(1).mean(dim=1)
    miou = present_class_miou(confusion_matrix(down, low, num_classes, ignore_index=None))
    return MaskAgreement(
        pixel_agreement=float(per_sample.mean()),
        miou=miou,
        per_sample_agreement=[float(a) for a in per_sample],
    )
