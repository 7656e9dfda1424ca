"""Training inputs (classifier-free drop rate, SR noise-augmentation levels) and the EMA update,
checked against their closed forms."""

import math

import pytest
import torch

from pairforge.core.tasks import (
    low_res_condition,
    make_layout,
    segmap_from_mask,
    training_inputs,
)
from pairforge.models.sr import noise_augment
from pairforge.train.ema import EMA


def labeled_batch(generator: torch.Generator, batch: int = 64, size: int = 8, classes: int = 3):
    """Images in [-1, 1) and fully labeled masks (no ignore pixels, so no segmap is empty)."""
    image = torch.rand(batch, 2, size, size, generator=generator) * 2 - 1
    mask = torch.randint(0, classes, (batch, size, size), generator=generator)
    mask[:, 0, 0] = 0  # every mask holds a labeled pixel even if draws were degenerate
    return {"image": image, "mask": mask}


@pytest.mark.parametrize("cond_drop_prob", [0.2, 0.5])
def test_sdm_segmap_is_dropped_at_the_configured_rate(cond_drop_prob):
    layout = make_layout("sdm", 2, 3, "onehot")
    generator = torch.Generator().manual_seed(0)
    dropped = total = 0
    for _ in range(50):
        batch = labeled_batch(generator)
        x0, condition = training_inputs(layout, batch, generator, cond_drop_prob=cond_drop_prob)
        assert torch.equal(x0, batch["image"])
        full = segmap_from_mask(batch["mask"], 3)
        empty = condition["segmap"].flatten(1).abs().sum(dim=1) == 0
        # A kept segmap is the one-hot mask untouched; a dropped one is all zeros.
        torch.testing.assert_close(condition["segmap"][~empty], full[~empty], rtol=0, atol=0)
        dropped, total = dropped + int(empty.sum()), total + len(empty)
    # 3200 Bernoulli(p) draws: 4 standard deviations is at most 0.035.
    assert abs(dropped / total - cond_drop_prob) < 4 * math.sqrt(0.25 / total)


def test_sdm_drop_rate_extremes_and_reproducibility():
    layout = make_layout("sdm", 2, 3, "onehot")
    batch = labeled_batch(torch.Generator().manual_seed(1))
    full = segmap_from_mask(batch["mask"], 3)
    never = training_inputs(layout, batch, torch.Generator().manual_seed(2), cond_drop_prob=0.0)
    always = training_inputs(layout, batch, torch.Generator().manual_seed(2), cond_drop_prob=1.0)
    assert torch.equal(never[1]["segmap"], full)
    assert not always[1]["segmap"].any()
    first = training_inputs(layout, batch, torch.Generator().manual_seed(3))[1]["segmap"]
    again = training_inputs(layout, batch, torch.Generator().manual_seed(3))[1]["segmap"]
    assert torch.equal(first, again)


def test_sr_noise_levels_cover_the_configured_range():
    layout = make_layout("sr", 2, 3, "onehot")
    generator = torch.Generator().manual_seed(0)
    noise_aug_max = 0.3
    levels = []
    for _ in range(40):
        batch = labeled_batch(generator, size=16)
        x0, condition = training_inputs(
            layout, batch, generator, noise_aug_max=noise_aug_max, scale_factor=4
        )
        assert x0.shape == (64, 2 + 3, 16, 16)
        torch.testing.assert_close(x0[:, :2], batch["image"], rtol=0, atol=0)
        level, low_res = condition["noise_level"], condition["low_res"]
        assert level.shape == (64,) and low_res.shape == (64, layout.low_res_channels, 4, 4)
        # low_res = cos(pi/2 level) clean + sin(pi/2 level) noise: recover the noise, ~N(0, 1).
        clean = low_res_condition(layout, batch["image"], batch["mask"], 4)
        angle = (level * math.pi / 2).view(-1, 1, 1, 1)
        noise = (low_res - torch.cos(angle) * clean) / torch.sin(angle)
        assert abs(noise.std().item() - 1) < 0.05 and abs(noise.mean().item()) < 0.05
        levels.append(level)
    levels = torch.cat(levels)  # 2560 draws of U[0, 0.3]
    assert levels.min() >= 0 and levels.max() <= noise_aug_max
    assert levels.min() < 0.01 * noise_aug_max and levels.max() > 0.99 * noise_aug_max
    assert abs(levels.mean().item() - noise_aug_max / 2) < 4 * noise_aug_max / math.sqrt(
        12 * len(levels)
    )


def test_sr_without_noise_augmentation_keeps_the_clean_condition():
    layout = make_layout("sr", 2, 3, "onehot")
    batch = labeled_batch(torch.Generator().manual_seed(4), size=16)
    _, condition = training_inputs(
        layout, batch, torch.Generator().manual_seed(5), noise_aug_max=0.0, scale_factor=4
    )
    assert not condition["noise_level"].any()
    clean = low_res_condition(layout, batch["image"], batch["mask"], 4)
    torch.testing.assert_close(condition["low_res"], clean, rtol=0, atol=0)
    # and the sampling-time helper agrees with the training one at a fixed level
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(
        noise_augment(clean, 0.2, noise),
        math.cos(0.1 * math.pi) * clean + math.sin(0.1 * math.pi) * noise,
    )


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))


def run_ema(values, **kwargs):
    """EMA of a model whose weight is set to values[k] before update k; returns (ema, decays)."""
    model = Tiny()
    ema = EMA(model, **kwargs)
    decays = []
    for k, value in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(value)
            model.count.fill_(k)
        decays.append(ema.update(model))
    return ema, decays


def test_ema_warm_up_decay_closed_form():
    """decay_k = min(decay, 1 - (1 + k / inv_gamma) ** -power): 0 at k = 0 (copy), then
    1 - 2^(-2/3) = 0.3700, 1 - 3^(-2/3) = 0.5193, 1 - 4^(-2/3) = 0.6031 ..., capped at decay."""
    values = [5.0, 1.0, -2.0, 4.0, 0.5, 3.0]
    ema, decays = run_ema(values, decay=0.9999, power=2 / 3, inv_gamma=1.0)
    expected = [1 - (1 + k) ** (-2 / 3) for k in range(len(values))]
    assert decays == pytest.approx(expected, abs=1e-15)
    assert decays[:4] == pytest.approx([0.0, 0.3700394750, 0.5192501432, 0.6031497913])
    # Closed form: avg_K = sum_k (1 - d_k) prod_{j > k} d_j p_k (d_0 = 0 drops the initial weight).
    average = sum(
        (1 - decays[k]) * math.prod(decays[k + 1 :]) * values[k] for k in range(len(values))
    )
    torch.testing.assert_close(ema.model.weight, torch.full((3,), average, dtype=torch.float64))
    assert ema.model.count.item() == len(values) - 1  # buffers are copied, not averaged
    assert ema.num_updates == len(values)
    assert not ema.model.weight.requires_grad


def test_ema_with_power_one_is_the_running_mean():
    """power 1, inv_gamma 1: decay_k = k / (k + 1), so the average is the plain mean so far."""
    values = [3.0, -1.0, 7.0, 2.0, 2.0, -4.0, 10.0]
    ema, _ = run_ema(values, decay=1.0, power=1.0, inv_gamma=1.0)
    torch.testing.assert_close(
        ema.model.weight, torch.full((3,), sum(values) / len(values), dtype=torch.float64)
    )


def test_ema_decay_caps_and_inv_gamma_stretches_the_warm_up():
    ema = EMA(Tiny(), decay=0.9, power=2 / 3, inv_gamma=1.0)
    # 1 - (1 + k) ** (-2/3) passes 0.9 between k = 30 (0.8981) and k = 31 (0.9010).
    ema.num_updates = 30
    assert ema.current_decay() == pytest.approx(1 - 31 ** (-2 / 3))
    ema.num_updates = 31
    assert ema.current_decay() == 0.9
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.9
    slow = EMA(Tiny(), decay=0.9999, power=2 / 3, inv_gamma=10.0)
    slow.num_updates = 30
    assert slow.current_decay() == pytest.approx(1 - 4 ** (-2 / 3))
