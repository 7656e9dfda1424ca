"""Pair pipelines on tiny untrained models: shapes, guidance, seeds, painting, SR mask agreement."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from pairforge.core.seeds import stage_seed
from pairforge.core.tasks import guided_denoiser
from pairforge.data.codec import MaskCodec
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import DatasetSpec
from pairforge.errors import PairforgeError
from pairforge.generate.pipelines import (
    SamplingSettings,
    generate_joint,
    generate_masks,
    generate_two_stage,
    mask_agreement,
    paint_images,
    super_resolve,
)
from pairforge.models.sdm import SemanticUNet
from pairforge.models.sr import SuperResUNet

FAST = SamplingSettings(sampler="ddim", steps=3)
TINY_UNET = dict(
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)


@dataclass
class TinyRun:
    """Stands in for pairforge.train.run.LoadedRun (same attributes)."""

    model: Any
    task: str
    spec: DatasetSpec
    normalizer: ChannelNormalizer
    codec: MaskCodec | None
    resolution: int
    scheduler_config: dict
    config: Any = None


def tiny_spec(num_channels: int, num_classes: int) -> DatasetSpec:
    return DatasetSpec(
        name="tiny",
        channels=[{"name": f"ch{c}", "unit": "um"} for c in range(num_channels)],
        classes=[{"id": 10 + k, "name": f"class{k}"} for k in range(num_classes)],
    )


def tiny_run(
    task: str,
    num_channels: int = 2,
    num_classes: int = 3,
    resolution: int = 16,
    save_to: Path | None = None,
    seed: int = 0,
) -> TinyRun:
    """An untrained tiny model of `task`; saved to save_to/model when given (for hashing)."""
    torch.manual_seed(seed)
    codec = MaskCodec(num_classes)
    if task == "joint":
        model = UNet2DModel(
            resolution, num_channels + codec.channels, num_channels + codec.channels, **TINY_UNET
        )
    elif task == "mask":
        model = UNet2DModel(resolution, codec.channels, codec.channels, **TINY_UNET)
    elif task == "sdm":
        model = SemanticUNet(
            resolution, num_channels, num_channels, num_classes, block_out_channels=(16, 32),
            layers_per_block=1, attention_levels=(False, False), norm_num_groups=8,
            spade_hidden_channels=16,
        )  # fmt: skip
    elif task == "sr":
        channels = num_channels + codec.channels
        model = SuperResUNet(
            resolution, channels, channels, channels, num_channels, block_out_channels=(16, 32),
            layers_per_block=1, attention_levels=(False, False), norm_num_groups=8,
        )  # fmt: skip
    else:
        raise ValueError(task)
    model.eval()
    if save_to is not None:
        model.save_pretrained(save_to / "model")
    return TinyRun(
        model=model,
        task=task,
        spec=tiny_spec(num_channels, num_classes),
        normalizer=ChannelNormalizer(
            low=[0.0] * num_channels, high=[10.0 * (c + 1) for c in range(num_channels)]
        ),
        codec=codec,
        resolution=resolution,
        scheduler_config=dict(DDPMScheduler(num_train_timesteps=1000).config),
    )


@pytest.mark.parametrize("num_channels,num_classes", [(1, 2), (2, 3), (3, 12)])
def test_joint_shapes_and_mask_range(num_channels, num_classes):
    run = tiny_run("joint", num_channels, num_classes)
    pairs = generate_joint(run, [0, 1], FAST)
    assert pairs.images.shape == (2, num_channels, 16, 16)
    assert pairs.masks.shape == (2, 16, 16) and pairs.masks.dtype == torch.int64
    assert 0 <= pairs.masks.min() and pairs.masks.max() < num_classes
    physical = pairs.physical_images()
    assert physical.dtype == np.float32 and physical.shape == (2, num_channels, 16, 16)
    # Physical = (model + 1) / 2 * (high - low) + low for this normalizer.
    expected = (pairs.images[:, -1].numpy() + 1) / 2 * (10.0 * num_channels)
    np.testing.assert_allclose(physical[:, -1], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("num_channels,num_classes", [(1, 2), (2, 3), (4, 5)])
def test_two_stage_and_sr_shapes(num_channels, num_classes):
    mask_run = tiny_run("mask", num_channels, num_classes, resolution=8)
    sdm_run = tiny_run("sdm", num_channels, num_classes, resolution=8)
    sr_run = tiny_run("sr", num_channels, num_classes, resolution=32)
    pairs = generate_two_stage(mask_run, sdm_run, [3, 4], guidance_scale=1.5, settings=FAST)
    assert pairs.images.shape == (2, num_channels, 8, 8) and pairs.masks.shape == (2, 8, 8)
    high = super_resolve(sr_run, pairs, [3, 4], noise_level=0.2, settings=FAST)
    assert high.images.shape == (2, num_channels, 32, 32) and high.masks.shape == (2, 32, 32)
    assert high.masks.max() < num_classes


def test_two_stage_uses_the_mask_stage_masks():
    mask_run, sdm_run = tiny_run("mask"), tiny_run("sdm")
    seeds = [11, 12]
    masks = generate_masks(mask_run, seeds, FAST)
    pairs = generate_two_stage(mask_run, sdm_run, seeds, settings=FAST)
    assert torch.equal(pairs.masks, masks)


def test_guidance_scale_zero_is_unconditional_one_is_conditional():
    model = tiny_run("sdm").model
    x_t, t = torch.randn(2, 2, 16, 16), torch.tensor([500, 20])
    segmap = (
        torch.nn.functional.one_hot(torch.randint(0, 3, (2, 16, 16)), 3).permute(0, 3, 1, 2).float()
    )
    with torch.no_grad():
        cond = model(x_t, t, segmap).sample
        uncond = model(x_t, t, torch.zeros_like(segmap)).sample
        torch.testing.assert_close(guided_denoiser(model, segmap, 0.0)(x_t, t), uncond)
        torch.testing.assert_close(guided_denoiser(model, segmap, 1.0)(x_t, t), cond)
        guided = guided_denoiser(model, segmap, 2.0)(x_t, t)
    torch.testing.assert_close(guided, uncond + 2.0 * (cond - uncond), atol=1e-5, rtol=1e-4)
    assert (cond - uncond).abs().mean() > 1e-4


@pytest.mark.parametrize("pipeline", ["joint", "two-stage", "two-stage+sr"])
def test_same_seed_same_pair_whatever_the_batch(pipeline):
    def make(seeds):
        if pipeline == "joint":
            return generate_joint(tiny_run("joint"), seeds, FAST)
        pairs = generate_two_stage(
            tiny_run("mask", resolution=8), tiny_run("sdm", resolution=8), seeds, settings=FAST
        )
        if pipeline.endswith("sr"):
            pairs = super_resolve(tiny_run("sr", resolution=32), pairs, seeds, settings=FAST)
        return pairs

    batch = make([7, 8, 9])
    alone = make([8])
    torch.testing.assert_close(batch.images[1:2], alone.images, atol=1e-4, rtol=1e-4)
    assert (batch.masks[1:2] == alone.masks).float().mean() > 0.99
    other = make([10])
    assert (other.images - alone.images).abs().mean() > 1e-3


def test_stage_seeds_differ_per_stage_and_are_stable():
    assert stage_seed(5, "mask") != stage_seed(5, "image")
    assert stage_seed(5, "mask") == stage_seed(5, "mask")
    assert stage_seed(5, "mask") != stage_seed(6, "mask")
    with pytest.raises(PairforgeError, match="stage"):
        stage_seed(1, "nope")


def test_paint_images_keeps_user_masks_and_validates_them():
    sdm_run = tiny_run("sdm")
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[0, :, 8:] = 2
    masks[1, 4:12, 4:12] = 1
    masks[1, 0, 0] = 255  # unlabeled pixel: unconditional there
    pairs = paint_images(sdm_run, masks, [1, 2], guidance_scale=2.0, settings=FAST)
    assert torch.equal(pairs.masks, masks)
    assert pairs.images.shape == (2, 2, 16, 16)
    other = paint_images(sdm_run, torch.ones(2, 16, 16, dtype=torch.long), [1, 2], 2.0, FAST)
    assert (other.images - pairs.images).abs().mean() > 1e-4
    with pytest.raises(PairforgeError, match="outside 0..2"):
        paint_images(sdm_run, torch.full((1, 16, 16), 3), [1], settings=FAST)
    with pytest.raises(PairforgeError, match="multiples of 2"):
        paint_images(sdm_run, torch.zeros(1, 9, 8, dtype=torch.long), [1], settings=FAST)
    with pytest.raises(PairforgeError, match="one seed per mask"):
        paint_images(sdm_run, torch.zeros(2, 16, 16, dtype=torch.long), [1], settings=FAST)
    # A larger drawn mask works too (convolutional model).
    wide = paint_images(sdm_run, torch.zeros(1, 16, 24, dtype=torch.long), [1], settings=FAST)
    assert wide.images.shape == (1, 2, 16, 24)


def test_wrong_run_task_is_named():
    with pytest.raises(PairforgeError, match="task 'mask', expected 'joint'"):
        generate_joint(tiny_run("mask"), [0], FAST)


def test_mask_agreement_values():
    low = torch.tensor([[[0, 1], [2, 2]]])
    high = low.repeat_interleave(4, 1).repeat_interleave(4, 2).clone()
    perfect = mask_agreement(high, low, 3)
    assert perfect.pixel_agreement == 1.0 and perfect.miou == 1.0
    high[0, :4, :4] = 1  # the class-0 block turns into class 1
    changed = mask_agreement(high, low, 3)
    assert changed.pixel_agreement == pytest.approx(0.75)
    # IoU: class 0 -> 0/1, class 1 -> 1/2, class 2 -> 2/2.
    assert changed.miou == pytest.approx((0 + 0.5 + 1) / 3)
    # A minority of changed pixels inside a block does not flip the majority.
    high = low.repeat_interleave(4, 1).repeat_interleave(4, 2).clone()
    high[0, 0, 0:3] = 2
    assert mask_agreement(high, low, 3).pixel_agreement == 1.0


def test_bf16_autocast_runs_every_stage():
    bf16 = SamplingSettings(sampler="ddim", steps=2, dtype=torch.bfloat16)
    pairs = generate_two_stage(
        tiny_run("mask", resolution=8), tiny_run("sdm", resolution=8), [1], settings=bf16
    )
    high = super_resolve(tiny_run("sr", resolution=32), pairs, [1], settings=bf16)
    assert high.images.dtype == torch.float32 and torch.isfinite(high.images).all()
    assert high.masks.shape == (1, 32, 32)
