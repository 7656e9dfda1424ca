"""bench/bench_time_to_quality.py on the tiny grains: both recipes train inside their time
budgets, are kept for a rerun, and get FID rows and the ODE proxy from the same seeds."""

import argparse
import json

import pytest
from bench_modules import load_bench
from typer.testing import CliRunner

from pairforge.cli import app


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_bench_time_to_quality_tiny(tmp_path):
    data = tmp_path / "grains"
    result = CliRunner().invoke(app, ["data", "grains", str(data), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    bench = load_bench("bench_time_to_quality")
    argv = ["--data", str(data), "--work", str(tmp_path / "w"), "--minutes", "0.04",
            "--samples", "6", "--quality-n", "2", "--reference-steps", "40",
            "--json", str(tmp_path / "t.json")]  # fmt: skip
    out = bench.main(argv)
    train = out["training"]
    assert train["diffusers"]["steps"] >= 1 and train["pairforge"]["steps"] >= 1
    # Each arm stopped at its own budget (one step may run past it).
    assert train["diffusers"]["train_seconds"] < 0.04 * 60 + 30
    assert train["pairforge"]["train_seconds"] < 0.02 * 60 + 30
    for arm in ("diffusers", "pairforge"):
        quality = out["quality"][arm]
        assert {"intensity", "depth"} <= set(quality["fid"])
        assert all(value >= 0 for value in quality["fid"].values())
        assert quality["n_fake"] == 6 and quality["ode_rms"] > 0
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["training"]["diffusers"] == train["diffusers"]
    # Training again keeps both models (the diffusers arm is not retrained, the pairforge run's
    # budget is spent).
    again = bench.train_both(argparse.Namespace(
        data=data, work=tmp_path / "w", minutes=0.04, ratio=0.5))  # fmt: skip
    assert again == train
