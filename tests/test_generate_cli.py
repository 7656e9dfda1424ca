"""`pairforge generate` end to end on tiny run folders (as training writes them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_generate_pipelines import tiny_run
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.data.check import check_dataset
from pairforge.data.dataset import load_dataset
from pairforge.errors import PairforgeError
from pairforge.train.run import write_inference_model

MODEL_CLASS = {
    "joint": "UNet2DModel",
    "mask": "UNet2DModel",
    "sdm": "SemanticUNet",
    "sr": "SuperResUNet",
}


def save_run(path: Path, task: str, resolution: int = 16) -> Path:
    """A run folder with RUN/model/ as the training loop writes it (no config.yaml)."""
    run = tiny_run(task, resolution=resolution)
    info = {
        "task": task,
        "model_class": MODEL_CLASS[task],
        "normalizer": run.normalizer.to_dict(),
        "codec": run.codec.to_dict(),
        "spec": run.spec.model_dump(mode="json"),
        "resolution": resolution,
        "crop_size": resolution,
        "image_channels": run.spec.num_channels,
        "num_classes": run.codec.num_classes,
    }
    write_inference_model(path, run.model, run.scheduler_config, info)
    return path


def invoke(*args):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


FAST_FLAGS = ["--sampler", "ddim", "--steps", "2", "--no-progress", "--device", "cpu"]


def test_cli_joint_writes_a_checked_dataset(tmp_path):
    run = save_run(tmp_path / "joint", "joint")
    result = invoke(
        "--pipeline",
        "joint",
        "--run",
        run,
        "--n",
        3,
        "--batch-size",
        2,
        "--seed",
        7,
        "--out",
        tmp_path / "gen",
        *FAST_FLAGS,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "3 pairs (3 new" in result.output
    assert check_dataset(tmp_path / "gen")["ok"]
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert [s["seed"] for s in manifest["samples"]] == [7, 8, 9]
    assert manifest["checkpoints"]["joint"]["task"] == "joint"
    assert len(next(iter(manifest["checkpoints"]["joint"]["sha256"].values()))) == 64
    # Resume: nothing new to do.
    again = invoke(
        "--pipeline",
        "joint",
        "--run",
        run,
        "--n",
        3,
        "--batch-size",
        2,
        "--seed",
        7,
        "--out",
        tmp_path / "gen",
        *FAST_FLAGS,
    )
    assert "3 pairs (0 new" in again.output


def test_cli_two_stage_with_sr(tmp_path):
    mask_run = save_run(tmp_path / "mask", "mask", resolution=8)
    sdm_run = save_run(tmp_path / "sdm", "sdm", resolution=8)
    sr_run = save_run(tmp_path / "sr", "sr", resolution=32)
    result = invoke(
        "--pipeline", "two-stage", "--mask-run", mask_run, "--sdm-run", sdm_run, "--sr", sr_run,
        "--guidance", 2.5, "--n", 2, "--out", tmp_path / "gen", *FAST_FLAGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert manifest["guidance_scale"] == 2.5
    assert manifest["sr"]["noise_level"] == 0.2  # default without a config.yaml
    ds = load_dataset(tmp_path / "gen")
    assert ds.read_image(ds.ids()[0]).shape == (2, 32, 32)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--pipeline", "joint"], "needs --run"),
        (["--pipeline", "two-stage", "--mask-run", "X"], "--run does not apply|needs --sdm-run"),
        (["--pipeline", "sideways", "--run", "X"], "--pipeline 'sideways'"),
        (["--pipeline", "joint", "--run", "X", "--sampler", "euler"], "--sampler 'euler'"),
    ],
)
def test_cli_errors_name_the_flag(tmp_path, args, message):
    result = invoke(*args, "--out", tmp_path / "gen")
    assert isinstance(result.exception, PairforgeError)
    assert any(part in str(result.exception) for part in message.split("|"))


def test_cli_rejects_a_run_of_the_wrong_task(tmp_path):
    mask_run = save_run(tmp_path / "mask", "mask")
    result = invoke(
        "--pipeline", "joint", "--run", mask_run, "--out", tmp_path / "gen", *FAST_FLAGS
    )
    assert isinstance(result.exception, PairforgeError)
    assert "task 'mask', not 'joint'" in str(result.exception)


@pytest.mark.slow
def test_cli_two_processes_match_one(tmp_path):
    """accelerate launch with 2 CPU processes writes the same dataset as 1 process."""
    run = save_run(tmp_path / "joint", "joint")
    common = [
        "generate",
        "--pipeline",
        "joint",
        "--run",
        str(run),
        "--n",
        "5",
        "--batch-size",
        "2",
        *FAST_FLAGS,
    ]
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pairforge.cli",
         *common, "--out", str(tmp_path / "two")],
        check=True, env=env, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pairforge.cli", *common, "--out", str(tmp_path / "one")],
        check=True,
        env=env,
        timeout=300,
    )
    two, one = load_dataset(tmp_path / "two"), load_dataset(tmp_path / "one")
    assert two.ids() == one.ids() and len(one.ids()) == 5
    for sample in one.ids():
        np.testing.assert_allclose(
            two.read_image(sample), one.read_image(sample), atol=2e-3, rtol=0
        )
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["num_processes"] == 2
    timings = sorted((tmp_path / "two" / ".generate").glob("timing-*.json"))
    assert [json.loads(t.read_text())["samples"] for t in timings] == [3, 2]


def write_blob_dataset(path: Path, size: int = 64, count: int = 3) -> Path:
    """A small 2-channel, 3-class dataset of disks (enough for 2-step training runs)."""
    from pairforge.data.dataset import DatasetWriter
    from pairforge.data.spec import DatasetSpec

    spec = DatasetSpec(
        name="blobs",
        channels=[{"name": "intensity", "unit": "a.u."}, {"name": "depth", "unit": "um"}],
        classes=[
            {"id": 0, "name": "binder"},
            {"id": 1, "name": "grain"},
            {"id": 5, "name": "pore"},
        ],
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    with DatasetWriter(path, spec) as writer:
        for i in range(count):
            mask = np.zeros((size, size), np.int64)
            for _ in range(6):
                cy, cx = rng.integers(0, size, 2)
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(4, 12) ** 2] = rng.integers(
                    1, 3
                )
            image = np.stack([mask * 0.4, -3.0 * mask]) + rng.normal(0, 0.1, (2, size, size))
            writer.add(f"m{i}", image.astype(np.float32), mask, split="train")
    return path


@pytest.mark.slow
def test_runs_trained_by_pairforge_train_generate_two_stage_with_sr(tmp_path):
    data = write_blob_dataset(tmp_path / "blobs")
    runner = CliRunner()
    for task, resolution in [("mask", 16), ("sdm", 16), ("sr", 64)]:
        result = runner.invoke(
            app,
            ["train", "tiny", "--set", f"task={task}", "--set", f"data.path={data}",
             "--set", "data.crop_size=64", "--set", f"data.resolution={resolution}",
             "--out", str(tmp_path / task)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output + repr(result.exception)
    result = invoke(
        "--pipeline", "two-stage", "--mask-run", tmp_path / "mask", "--sdm-run", tmp_path / "sdm",
        "--sr", tmp_path / "sr", "--n", 2, "--out", tmp_path / "gen", *FAST_FLAGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = check_dataset(tmp_path / "gen")
    assert report["ok"], report["problems"]
    ds = load_dataset(tmp_path / "gen")
    assert ds.read_image(ds.ids()[0]).shape == (2, 64, 64)
    assert [c.id for c in ds.spec.classes] == [0, 1, 5]
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert manifest["sr"]["noise_level"] == 0.2  # from the SR run's config.yaml (tiny preset)
    assert manifest["guidance_scale"] == 1.5


def test_cli_paint_defaults_to_one_pair_per_drawn_mask(tmp_path):
    from test_generate_writer import write_mask_dataset

    sdm_run = save_run(tmp_path / "sdm", "sdm")
    source = write_mask_dataset(tmp_path / "drawn", [(16, 16)] * 3, tiny_run("sdm").spec)
    result = invoke(
        "--pipeline",
        "paint",
        "--sdm-run",
        sdm_run,
        "--masks",
        source,
        "--out",
        tmp_path / "gen",
        *FAST_FLAGS,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "3 pairs (3 new" in result.output


def test_sample_and_generate_joint_give_the_same_pair_for_a_seed(tmp_path):
    """One sampling path: `pairforge sample` sample seed s == `generate --pipeline joint`
    sample with seed s (ids differ: sample-<seed> / gen<index>)."""
    run = save_run(tmp_path / "joint", "joint")
    result = invoke("--pipeline", "joint", "--run", run, "--n", "2", "--seed", "5",
                    "--out", tmp_path / "gen", *FAST_FLAGS)  # fmt: skip
    assert result.exit_code == 0, result.output
    sampled = CliRunner().invoke(
        app, ["sample", str(run), "--n", "2", "--seed", "5", "--sampler", "ddim", "--steps", "2",
              "--device", "cpu", "--out", str(tmp_path / "sample")],
    )  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    generated, samples = load_dataset(tmp_path / "gen"), load_dataset(tmp_path / "sample")
    for index, seed in enumerate((5, 6)):
        np.testing.assert_allclose(
            samples.read_image(f"sample-{seed:06d}"),
            generated.read_image(f"gen{index:06d}"),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_array_equal(
            samples.read_mask(f"sample-{seed:06d}"), generated.read_mask(f"gen{index:06d}")
        )
