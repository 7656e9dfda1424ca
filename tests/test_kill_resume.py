"""SIGKILL a real `pairforge train` inside its writes, rerun, and end bit-identical to an
uninterrupted run with the whole metrics history.

The kills land exactly inside named writes through the io fault hook (PAIRFORGE_FAULT, see
pairforge.io): a checkpoint, the config rewrite, the metrics rewrite on resume, a metrics append
and the final model write. One run folder goes through all of them in turn, each rerun resuming
from what the previous kill left; six `pairforge` processes, about 45 s on one thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train_helpers import tiny_config, write_tiny_dataset

from pairforge.io import read_jsonl
from pairforge.train.checkpoint import latest_checkpoint, list_checkpoints
from pairforge.train.loop import train

pytestmark = [pytest.mark.usefixtures("single_thread_module"), pytest.mark.slow]


def pairforge_train(data, run_dir, max_steps, fault=None):
    """`pairforge train tiny` (4 steps, a checkpoint and model/ every step) in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PAIRFORGE_FAULT", None)
    if fault:
        env["PAIRFORGE_FAULT"] = fault
    command = [sys.executable, "-m", "pairforge.cli", "train", "tiny", "--set",
               f"data.path={data}", "--set", f"optim.max_steps={max_steps}", "--out",
               str(run_dir)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def killed(result):
    return result.returncode == -signal.SIGKILL


def test_sigkill_inside_every_write_then_resume_is_bit_identical(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    reference = train(tiny_config(data, "optim.max_steps=4"), tmp_path / "reference")
    run_dir = tmp_path / "run"

    # 1. Killed inside the step-2 checkpoint (tensors written, state.json not).
    result = pairforge_train(data, run_dir, 3, "checkpoint:2")
    assert killed(result), result.stderr
    assert [s for s, _ in list_checkpoints(run_dir)] == [1]

    # 2. Continued with max_steps=4: killed while RUN/config.yaml is rewritten; the old file
    # stays whole (it used to be truncated in place).
    result = pairforge_train(data, run_dir, 4, "write:config.yaml")
    assert killed(result), result.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["max_steps"] == 3

    # 3. Killed while the metrics after checkpoint 1 are dropped: the history stays.
    result = pairforge_train(data, run_dir, 4, "write:metrics.jsonl")
    assert killed(result), result.stderr
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]

    # 4. Killed with half of the step-3 metrics line on disk (like a full disk).
    result = pairforge_train(data, run_dir, 4, "metrics:2")
    assert killed(result), result.stderr
    assert not (run_dir / "metrics.jsonl").read_bytes().endswith(b"\n")

    # 5. Killed inside the final model write: checkpoint 4 complete, model/ still step 3.
    result = pairforge_train(data, run_dir, 4, "model:2")
    assert killed(result), result.stderr
    assert "line 3 is incomplete" in result.stderr  # the torn line was dropped with a warning
    assert json.loads((run_dir / "model" / "pairforge.json").read_text())["step"] == 3
    assert (run_dir / ".model-tmp").is_dir()

    # 6. The rerun repairs model/ from checkpoint 4 and says so by finishing normally.
    result = pairforge_train(data, run_dir, 4)
    assert result.returncode == 0, result.stderr
    assert "run written" in result.stdout

    # Bit-identical to the uninterrupted run: inference weights, model, EMA, optimizer, RNG.
    weights = "model/diffusion_pytorch_model.safetensors"
    assert_same_tensors(load_file(reference / weights), load_file(run_dir / weights))
    a, b = latest_checkpoint(reference), latest_checkpoint(run_dir)
    assert a.name == b.name == "step-00000004"
    for name in ("model.safetensors", "ema.safetensors", "rng.safetensors"):
        assert_same_tensors(load_file(a / name), load_file(b / name))
    optimizer_a = torch.load(a / "optimizer.pt", weights_only=True)["state"]
    optimizer_b = torch.load(b / "optimizer.pt", weights_only=True)["state"]
    for key in optimizer_a:
        assert_same_tensors(optimizer_a[key], optimizer_b[key])
    # The whole metrics history, with the same losses.
    rows_a, rows_b = read_jsonl(reference / "metrics.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]
    # Nothing half-written is left behind.
    leftovers = [p.name for p in run_dir.rglob(".*") if p.name != ".model-old"]
    assert leftovers == [], leftovers
    assert not (run_dir / ".model-old").exists()


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
