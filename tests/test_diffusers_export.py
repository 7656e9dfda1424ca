"""RUN/model/ of unconditional UNet2DModel runs is also a diffusers DDPMPipeline folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_train_helpers import tiny_config, write_tiny_dataset

from pairforge.core.run import load_run
from pairforge.train.loop import train

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def runs(data_path, tmp_path_factory):
    """task -> run dir: tiny 2-step runs (cosine / eps by the preset; joint on linear / v)."""
    root = tmp_path_factory.mktemp("runs")
    overrides = {
        "image": [],
        "joint": ["diffusion.schedule=linear", "diffusion.prediction=v"],
        "mask": [],
        "sdm": [],
        "sr": [],
    }
    return {
        task: train(tiny_config(data_path, f"task={task}", *extra), root / task)
        for task, extra in overrides.items()
    }


def closed_form_alphas_cumprod(schedule: str, steps: int = 1000) -> np.ndarray:
    """abar_t in float64: DDPM's linear betas 1e-4..0.02, or Nichol & Dhariwal's cosine
    (s = 0.008, betas capped at 0.999)."""
    if schedule == "linear":
        betas = np.linspace(1e-4, 0.02, steps, dtype=np.float64)
    else:
        f = [math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(steps + 1)]
        betas = np.minimum(1 - np.array(f[1:]) / np.array(f[:-1]), 0.999)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize(
    "task,schedule,prediction",
    [
        ("image", "cosine", "epsilon"),
        ("joint", "linear", "v_prediction"),
        ("mask", "cosine", "epsilon"),
    ],
)
def test_ddpm_pipeline_loads_the_runs_weights_and_schedule(runs, task, schedule, prediction):
    from diffusers import DDPMPipeline, UNet2DModel

    model_dir = runs[task] / "model"
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    record = json.loads((model_dir / "pairforge.json").read_text())
    assert record["diffusers_pipeline"] == {"written": True, "pipeline": "DDPMPipeline"}

    pipe = DDPMPipeline.from_pretrained(model_dir)
    run = load_run(runs[task])
    ours, theirs = run.model.state_dict(), pipe.unet.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # The same file on disk (a hard link), so the two readers cannot drift apart.
    top = model_dir / "diffusion_pytorch_model.safetensors"
    sub = model_dir / "unet" / top.name
    assert top.stat().st_ino == sub.stat().st_ino

    scheduler = pipe.scheduler
    assert scheduler.config.prediction_type == prediction
    assert scheduler.config.clip_sample is False and scheduler.config.variance_type == "fixed_small"
    expected = closed_form_alphas_cumprod(schedule)
    np.testing.assert_allclose(
        scheduler.alphas_cumprod.double().numpy(), expected, rtol=2e-5, atol=1e-9
    )
    from pairforge.diffusion.schedule import alphas_cumprod

    # pairforge's own abar (float64 products of DDPMScheduler's float32 betas) is the same one.
    ours_abar = alphas_cumprod(run.scheduler_config).numpy()
    np.testing.assert_allclose(ours_abar, expected, rtol=1e-6, atol=1e-12)

    # Existing readers of the top-level files keep working.
    plain = UNet2DModel.from_pretrained(model_dir)
    assert torch.equal(plain.state_dict()["conv_in.weight"], ours["conv_in.weight"])


@pytest.mark.parametrize("task,channels", [("image", 2), ("joint", 2 + 3), ("mask", 3)])
def test_pipeline_call_matches_pairforges_ddpm_sampler(runs, task, channels):
    """channels: 2 image channels, + 3 one-hot mask channels (joint); mask: the 3 alone."""
    from diffusers import DDPMPipeline

    from pairforge.diffusion.sampling import model_denoiser, sample

    pipe = DDPMPipeline.from_pretrained(runs[task] / "model")
    run = load_run(runs[task])
    out = pipe(
        batch_size=1,
        generator=torch.Generator("cpu").manual_seed(7),
        num_inference_steps=2,
        output_type="np",
    ).images
    channels, res, _ = run.sample_shape
    assert run.sample_shape == (channels, 16, 16)
    assert out.shape == (1, res, res, channels)
    # Same seed, same noise, same steps: DDPMPipeline's image is pairforge's ddpm sample x0,
    # mapped from [-1, 1] to [0, 1] and clamped.
    x0 = sample(model_denoiser(run.model), run.sample_shape, [7], "ddpm", 2, run.scheduler_config,
                progress=False)  # fmt: skip
    expected = (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ((expected > 0) & (expected < 1)).mean() > 0.3  # not all clamped: values compared
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("task", ["sdm", "sr"])
def test_conditional_runs_write_no_pipeline_index_and_say_why(runs, task):
    model_dir = runs[task] / "model"
    assert not (model_dir / "model_index.json").exists()
    assert not (model_dir / "unet").exists() and not (model_dir / "scheduler").exists()
    entry = json.loads((model_dir / "pairforge.json").read_text())["diffusers_pipeline"]
    assert entry["written"] is False
    assert f"task {task!r} samples from a condition" in entry["reason"]
    assert load_run(runs[task]).task == task  # pairforge still loads it


def test_blocker_names_a_schedule_ddpm_scheduler_cannot_express():
    from diffusers import UNet2DModel

    from pairforge.core.tasks import get_task
    from pairforge.diffusion.schedule import make_scheduler_config
    from pairforge.train.pipeline_export import pipeline_blocker

    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4)  # fmt: skip
    config = make_scheduler_config()
    assert pipeline_blocker(get_task("image"), model, config) is None
    reason = pipeline_blocker(get_task("image"), model, {**config, "edm_sigma_max": 80.0})
    assert reason == (
        "the noise schedule's edm_sigma_max=80.0 cannot be expressed in diffusers' DDPMScheduler"
    )
    odd = UNet2DModel(**{**model.config, "out_channels": 2})
    assert "maps 1 to 2 channels" in pipeline_blocker(get_task("image"), odd, config)


def test_the_model_folder_still_reads_as_a_plain_diffusers_unet_folder(runs):
    """`seg fit --run RUN/model` (a diffusers UNet folder, now with unet/ inside) gets the
    run's weights and its training schedule."""
    from pairforge.seg.source import load_feature_source

    run = load_run(runs["joint"])
    source = load_feature_source(runs["joint"] / "model")
    assert source.image_channels == run.model.config.in_channels == 5
    for key, value in run.model.state_dict().items():
        assert torch.equal(source.model.state_dict()[key], value), key
    assert source.scheduler_config["beta_schedule"] == "linear"
    assert source.scheduler_config["prediction_type"] == "v_prediction"
