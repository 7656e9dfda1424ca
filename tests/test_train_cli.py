"""CLI smoke tests: `pairforge train` 2 steps and `pairforge sample` in a temp dir; multi-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_train_helpers import write_tiny_dataset
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.errors import PairforgeError

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def test_train_then_sample_joint(data_path, tmp_path):
    from pairforge.data.dataset import load_dataset

    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "tiny", "--set", f"data.path={data_path}", "--set", "task=joint",
              "--out", str(run_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run_dir / "model" / "pairforge.json").is_file()
    out = tmp_path / "samples"
    result = runner.invoke(
        app, ["sample", str(run_dir), "--n", "3", "--out", str(out), "--steps", "3",
              "--batch-size", "2", "--seed", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "grid.png").is_file()
    samples = load_dataset(out)
    assert samples.ids() == ["sample-000005", "sample-000006", "sample-000007"]
    image = samples.read_image("sample-000005")
    mask = samples.read_mask("sample-000005")
    assert image.shape == (2, 16, 16) and image.dtype == np.float32
    assert mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 1, 2}
    # Physical units: the depth channel is decoded with the training normalizer (um, not [-1, 1]).
    info = json.loads((run_dir / "model" / "pairforge.json").read_text())
    assert samples.spec.normalization.high == pytest.approx(info["normalizer"]["high"])
    # The writer of `generate`: a manifest with seeds and checkpoint hashes; a repeated call
    # resumes (draws nothing new), one with other settings is refused.
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["seed"] for s in manifest["samples"]] == [5, 6, 7]
    assert [s["id"] for s in manifest["samples"]] == samples.ids()
    assert len(next(iter(manifest["checkpoints"]["joint"]["sha256"].values()))) == 64
    args = ["sample", str(run_dir), "--n", "3", "--out", str(out), "--batch-size", "2",
            "--seed", "5"]  # fmt: skip
    assert runner.invoke(app, [*args, "--steps", "3"]).exit_code == 0
    again_manifest = json.loads((out / "manifest.json").read_text())
    assert again_manifest["generated_this_session"]["samples"] == 0
    result = runner.invoke(app, [*args, "--steps", "4"])
    assert isinstance(result.exception, PairforgeError) and "steps=3" in str(result.exception)

    # Same seed, other batch size -> same sample (up to float round-off).
    again = tmp_path / "again"
    result = runner.invoke(
        app, ["sample", str(run_dir), "--n", "1", "--out", str(again), "--steps", "3",
              "--batch-size", "1", "--seed", "6"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        load_dataset(again).read_image("sample-000006"),
        samples.read_image("sample-000006"),
        rtol=1e-4,
        atol=1e-4,
    )


def test_mask_run_samples_masks(data_path, tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    args = ["train", "tiny", "--set", f"data.path={data_path}", "--set", "task=mask"]
    assert runner.invoke(app, [*args, "--out", str(run_dir)]).exit_code == 0
    out = tmp_path / "masks"
    result = runner.invoke(
        app, ["sample", str(run_dir), "--n", "2", "--out", str(out), "--steps", "2"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "sample-000000.png",
        "sample-000001.png",
    ]


def test_sample_bf16_without_native_support_warns(data_path, tmp_path, monkeypatch):
    from pairforge import precision
    from pairforge.train.sample_dataset import sample_run_to_dataset

    run_dir = tmp_path / "run"
    args = ["train", "tiny", "--set", f"data.path={data_path}", "--set", "task=mask"]
    assert CliRunner().invoke(app, [*args, "--out", str(run_dir)]).exit_code == 0
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        sample_run_to_dataset(
            run_dir, tmp_path / "masks", 1, steps=2, bf16=True, device="cpu", progress=False
        )
    assert (tmp_path / "masks" / "masks" / "sample-000000.png").is_file()


def test_dry_run_prints_resolved_config(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "tiny", "--set", "optim.lr=3e-4", "--dry-run", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "lr: 0.0003" in result.output and "task: image" in result.output
    assert not (tmp_path / "r").exists()


def test_errors_name_the_flag(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "tiny", "--set", "optim.nope=1", "--dry-run"])
    assert isinstance(result.exception, PairforgeError)
    assert "optim.nope" in str(result.exception)
    result = runner.invoke(app, ["sample", str(tmp_path), "--n", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--n" in result.output
    result = runner.invoke(app, ["sample", str(tmp_path / "x"), "--n", "1", "--out", "o"])
    assert isinstance(result.exception, PairforgeError) and "no such run" in str(result.exception)
    result = runner.invoke(
        app, ["sample", str(tmp_path), "--n", "1", "--out", "o", "--sampler", "euler"]
    )
    assert result.exit_code == 2 and "--sampler" in result.output


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(data_path, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: gloo DDP, one run directory."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "pairforge.cli", "train", "tiny", "--set", f"data.path={data_path}",
        "--set", "optim.max_steps=3", "--set", "task=joint", "--out", str(run_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run written to") == 1
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["processes"] == 2 for m in metrics)
    from pairforge.core.run import load_run

    run = load_run(run_dir)
    x = torch.zeros(1, 5, 16, 16)
    assert torch.isfinite(run.model(x, torch.tensor([10])).sample).all()
