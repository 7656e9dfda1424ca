"""The SR condition of training previews follows the pipeline's per-sample seed rule."""

from __future__ import annotations

import torch

from pairforge.core.seeds import seeded_normal, stage_seed
from pairforge.core.tasks import SamplingCondition, SrTask, get_task, low_res_condition
from pairforge.models.sr import noise_augment


class _Recorder(torch.nn.Module):
    """Stands in for a SuperResUNet: remembers the low_res and levels it is called with."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, x_t, t, low_res, levels):
        self.calls.append((low_res, levels))
        return type("Out", (), {"sample": x_t})()


def _high_res_pair(batch, generator):
    image = torch.randn(batch, 2, 16, 16, generator=generator)
    mask = torch.randint(0, 3, (batch, 16, 16), generator=generator)
    return image, mask


def test_augmented_low_res_is_per_sample_and_matches_the_pipeline_rule():
    generator = torch.Generator().manual_seed(0)
    low_res = torch.randn(3, 5, 4, 4, generator=generator)
    seeds = [7, 8, 9]
    augmented, levels = SrTask.augmented_low_res(low_res, seeds, 0.25)
    noise = seeded_normal(
        [stage_seed(s, "sr-augment") for s in seeds], (5, 4, 4), "cpu", low_res.dtype
    )
    torch.testing.assert_close(augmented, noise_augment(low_res, 0.25, noise), rtol=0, atol=0)
    assert levels.tolist() == [0.25] * 3
    # A sample's condition depends on its own seed only, not on the batch it is in.
    alone, _ = SrTask.augmented_low_res(low_res[1:2], [8], 0.25)
    torch.testing.assert_close(alone[0], augmented[1], rtol=0, atol=0)


def test_preview_denoiser_uses_the_seeds_of_the_condition():
    task = get_task("sr")
    layout = task.make_layout(2, 3, "onehot")
    image, mask = _high_res_pair(2, torch.Generator().manual_seed(1))
    model = _Recorder()
    clean = low_res_condition(layout, image, mask, 4)
    for seeds in ((0, 1), (5, 6)):
        condition = SamplingCondition(mask=mask, image=image, seeds=seeds)
        denoise = task.denoiser(layout, model, condition, sr_noise_level=0.2, sr_scale_factor=4)
        denoise(torch.zeros(2, layout.sample_channels, 16, 16), torch.zeros(2))
        expected, levels = SrTask.augmented_low_res(clean, seeds, 0.2)
        torch.testing.assert_close(model.calls[-1][0], expected, rtol=0, atol=0)
        torch.testing.assert_close(model.calls[-1][1], levels)
    # No seeds given: samples 0 .. B-1, as the preview grid's rows.
    denoise = task.denoiser(
        layout, model, SamplingCondition(mask=mask, image=image), sr_noise_level=0.2
    )
    denoise(torch.zeros(2, layout.sample_channels, 16, 16), torch.zeros(2))
    torch.testing.assert_close(model.calls[-1][0], model.calls[0][0], rtol=0, atol=0)
