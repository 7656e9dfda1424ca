"""Training loop: loss goes down, save -> load is exact, resume == uninterrupted, run layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import tiny_config, write_tiny_dataset

from pairforge.core.run import load_run
from pairforge.diffusion.objectives import diffusion_loss, q_sample
from pairforge.diffusion.schedule import alphas_cumprod, make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model
from pairforge.train.checkpoint import latest_checkpoint, list_checkpoints
from pairforge.train.loop import train

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(prediction):
    torch.manual_seed(0)
    model = build_model("UNet2DModel", "tiny", 2, 2, 16)
    config = make_scheduler_config("cosine", prediction)
    abar = alphas_cumprod(config)
    g = torch.Generator().manual_seed(1)
    x0 = torch.tanh(torch.randn(8, 2, 16, 16, generator=g))
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    x_t = q_sample(x0, eps, t, abar).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_now():
        return diffusion_loss(model(x_t, t).sample, x0, eps, t, abar, prediction, 5.0).mean()

    initial = loss_now()
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss_now()
    assert final < 0.9 * initial.detach()


def test_run_directory_layout_and_load_run(data_path, tmp_path):
    run_dir = train(tiny_config(data_path, "task=joint", "log.sample_every=2"), tmp_path / "run")
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "samples" / "step-00000002.png").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["loss"] > 0 and m["processes"] == 1 for m in metrics)
    model_dir = run_dir / "model"
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        assert (model_dir / name).is_file(), name
    info = json.loads((model_dir / "pairforge.json").read_text())
    assert info["task"] == "joint" and info["codec"]["channels"] == 3
    assert info["resolution"] == 16 and info["crop_size"] == 32
    assert info["spec"]["channels"][1]["name"] == "depth"
    # Weights are saved without wrapper prefixes.
    for file in [
        model_dir / "diffusion_pytorch_model.safetensors",
        *run_dir.glob("checkpoints/*/*.safetensors"),
    ]:
        keys = load_file(file).keys()
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys), file

    run = load_run(run_dir)
    assert not run.model.training
    assert run.task == "joint" and run.codec.num_classes == 3 and run.resolution == 16
    assert run.sample_shape == (5, 16, 16)
    assert run.spec.channel_names == ["intensity", "depth"]
    assert run.config.optim.max_steps == 2
    assert run.scheduler_config["prediction_type"] == "epsilon"


def test_save_load_gives_identical_outputs(data_path, tmp_path):
    run_dir = train(tiny_config(data_path), tmp_path / "run")
    run = load_run(run_dir)
    # The inference weights are the EMA weights of the last checkpoint, bit for bit.
    ema = load_file(latest_checkpoint(run_dir) / "ema.safetensors")
    fresh = build_model("UNet2DModel", "tiny", 2, 2, 16)
    fresh.load_state_dict(ema)
    fresh.eval()
    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 500, 999])
    with torch.no_grad():
        assert torch.equal(run.model(x, t).sample, fresh(x, t).sample)
        assert torch.equal(load_run(run_dir).model(x, t).sample, run.model(x, t).sample)


def test_resume_continues_identically(data_path, tmp_path):
    straight = train(
        tiny_config(data_path, "optim.max_steps=4", "optim.warmup_steps=3"), tmp_path / "a"
    )
    first = train(
        tiny_config(data_path, "optim.max_steps=2", "optim.warmup_steps=3"), tmp_path / "b"
    )
    # Simulate a crash during the step-3 checkpoint: a half-written temp folder is ignored.
    (first / "checkpoints" / ".tmp-step-00000003").mkdir()
    resumed = train(tiny_config(data_path, "optim.max_steps=4", "optim.warmup_steps=3"), first)
    assert [s for s, _ in list_checkpoints(resumed)] == [3, 4]
    a, b = latest_checkpoint(straight), latest_checkpoint(resumed)
    for name in ("model.safetensors", "ema.safetensors"):
        weights_a, weights_b = load_file(a / name), load_file(b / name)
        assert weights_a.keys() == weights_b.keys()
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (name, key)
    opt_a = torch.load(a / "optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(b / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"]) for k in opt_a)
    steps = [
        json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    # And the resumed run really differs from a run with another seed (the check can fail).
    other = train(
        tiny_config(data_path, "optim.max_steps=4", "optim.warmup_steps=3", "seed=1"),
        tmp_path / "c",
    )
    other_weights = load_file(latest_checkpoint(other) / "model.safetensors")
    assert any(not torch.equal(other_weights[k], weights_a[k]) for k in weights_a)


def test_resume_refuses_changed_settings(data_path, tmp_path):
    run_dir = train(tiny_config(data_path), tmp_path / "run")
    with pytest.raises(PairforgeError, match="optim.lr"):
        train(tiny_config(data_path, "optim.lr=0.5"), run_dir)


@pytest.mark.parametrize("task", ["mask", "sdm", "sr"])
def test_every_task_trains_and_loads(data_path, tmp_path, task):
    overrides = ["log.sample_every=2", f"task={task}"]
    if task == "sr":
        overrides.append("sr.scale_factor=4")
    run_dir = train(tiny_config(data_path, *overrides), tmp_path / task)
    run = load_run(run_dir)
    expected = {"mask": "UNet2DModel", "sdm": "SemanticUNet", "sr": "SuperResUNet"}[task]
    assert type(run.model).__name__ == expected
    assert (run_dir / "samples" / "step-00000002.png").is_file()
    channels = {"mask": 3, "sdm": 2, "sr": 5}[task]
    assert run.sample_shape == (channels, 16, 16)


def test_bf16_channels_last_grad_accumulation(data_path, tmp_path):
    config = tiny_config(
        data_path, "precision=bf16", "channels_last=true", "optim.grad_accumulation=2"
    )
    run_dir = train(config, tmp_path / "run")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    weights = load_file(run_dir / "model" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 for v in weights.values())


def test_missing_split_is_an_error(data_path, tmp_path):
    with pytest.raises(PairforgeError, match="no split named 'val'"):
        train(tiny_config(data_path, "data.split=val"), tmp_path / "run")


def test_data_workers_do_not_change_the_result(data_path, tmp_path):
    """Items are a pure function of their position, so worker processes change nothing."""
    plain = train(tiny_config(data_path), tmp_path / "plain")
    workers = train(tiny_config(data_path, "data.num_workers=2"), tmp_path / "workers")
    a = load_file(latest_checkpoint(plain) / "model.safetensors")
    b = load_file(latest_checkpoint(workers) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_bounds_total_training_time_across_reruns(data_path, tmp_path):
    # A budget of ~0 minutes stops after the first step; continuing the finished run trains
    # no further (the budget is the run's total, like max_steps), but the run stays usable.
    config = tiny_config(
        data_path, "optim.max_steps=50", "optim.max_minutes=1e-6", "log.every=10"
    )
    run_dir = train(config, tmp_path / "run")
    steps = [s for s, _ in list_checkpoints(run_dir)]
    assert steps == [1]
    # The step that spent the budget has its metrics row (log.every is larger).
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1] and rows[0]["train_seconds"] > 0
    train(config, run_dir)
    assert [s for s, _ in list_checkpoints(run_dir)] == [1]
    assert load_run(run_dir).info["step"] == 1
    # A larger budget continues from where the run stopped.
    more = tiny_config(data_path, "optim.max_steps=3", "optim.max_minutes=10")
    train(more, run_dir)
    assert latest_checkpoint(run_dir).name.endswith("3")
