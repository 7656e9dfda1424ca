"""Downstream experiment end to end on a tiny configuration, plus its pieces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_eval_fixtures import single_thread, write_dataset  # noqa: F401 (autouse fixture)

from pairforge.data.dataset import load_dataset
from pairforge.errors import PairforgeError
from pairforge.eval.downstream import (
    DownstreamConfig,
    _labeled_tiles,
    _repeat_order,
    format_downstream_table,
    run_downstream,
    summarize_runs,
    write_downstream,
)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    real = write_dataset(root / "real", 6, 48, seed=0, splits={"train": 3, "val": 1, "test": 2})
    synthetic = write_dataset(root / "synthetic", 10, 16, seed=1)
    return real, synthetic


def test_tiles_count_every_pixel_once(datasets):
    real, _ = datasets
    ds = load_dataset(real)
    # 48 px measurement, 32 px tiles -> starts 0 and 16 (flush): 4 tiles, 16 px at res 16.
    tiles = _labeled_tiles(ds, "test", 32, 16, ds.normalizer)
    assert tiles["image"].shape == (8, 2, 16, 16) and tiles["ids"] == ["s004", "s005"]
    counted = int((tiles["mask"] != 255).sum())
    assert counted == 2 * 24 * 24  # two measurements of 48 px at half resolution


def test_tiny_experiment_end_to_end(datasets, tmp_path):
    real, synthetic = datasets
    config = DownstreamConfig(
        budgets=[4],
        seeds=[0, 1, 2],
        steps=4,
        batch_size=4,
        crop_size=32,
        resolution=16,
        synthetic_fraction=0.5,
        max_synthetic=6,
        encoder="mobilenet_v2",  # builds in 0.1 s; resnet18 takes ~3 s per run on this CPU
    )
    lines = []
    result = run_downstream(real, synthetic, config, log=lines.append)
    runs = result["runs"]
    # Per seed: synthetic once, then real and mixed at each budget.
    assert len(runs) == 3 * (1 + 2) and len(lines) == len(runs)
    for run in runs:
        assert 0.0 <= run["test_miou"] <= 1.0 and 0.0 <= run["best_val_miou"] <= 1.0
        assert run["selection"] == "val_miou" and 1 <= run["best_epoch"] <= run["epochs"]
        assert len(run["test_per_class_iou"]) == 2
    # All runs: same samples per epoch (the largest set, mixed 4 + 4) and the same epochs.
    assert {(r["epoch_samples"], r["epochs"]) for r in runs} == {(8, 2)}
    mixed = [r for r in runs if r["condition"] == "mixed" and r["budget"] == 4]
    assert all(r["n_real"] == 4 and r["n_synthetic"] == 4 for r in mixed)
    assert all(
        r["n_synthetic"] == 6 and r["budget"] is None for r in runs if r["condition"] == "synthetic"
    )
    summary = {(r["condition"], r["budget"]): r for r in result["summary"]}
    assert set(summary) == {("synthetic", None), ("real", 4), ("mixed", 4)}
    row = summary[("real", 4)]
    values = [r["test_miou"] for r in runs if r["condition"] == "real" and r["budget"] == 4]
    assert row["n_seeds"] == 3 and row["test_miou_mean"] == pytest.approx(np.mean(values))
    assert row["test_miou_std"] == pytest.approx(np.std(values, ddof=1))
    assert result["data"]["test_measurements"] == ["s004", "s005"]
    assert "never test" in result["data"]["model_selection"]

    paths = write_downstream(result, tmp_path / "eval")
    assert json.loads(paths["json"].read_text())["summary"] == json.loads(
        json.dumps(result["summary"])
    )
    assert "| mixed | 4 | 4 | 3 |" in paths["table"].read_text()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_repeat_order_covers_every_sample_evenly():
    order = _repeat_order(3, 10, seed=0)
    assert order.shape == (10,)
    assert sorted(order.bincount().tolist()) == [3, 3, 4]
    assert sorted(order[:3].tolist()) == [0, 1, 2]  # whole permutations first
    assert order.tolist() == _repeat_order(3, 10, seed=0).tolist()


def test_summary_of_one_seed_has_no_std():
    runs = [
        {
            "condition": "real",
            "budget": 2,
            "seed": 0,
            "n_real": 2,
            "n_synthetic": 0,
            "test_miou": 0.5,
            "best_val_miou": 0.4,
        }
    ]
    (row,) = summarize_runs(runs)
    assert row["test_miou_std"] is None and row["test_miou_mean"] == 0.5
    assert "| real | 2 | 0 | 1 | 50.00 |" in format_downstream_table({"summary": [row]})


def test_missing_test_labels_and_bad_settings_are_errors(tmp_path):
    real = write_dataset(tmp_path / "r", 4, 32, labeled=3, splits={"train": 2, "val": 1, "test": 1})
    with pytest.raises(PairforgeError, match="split 'test' has no labeled samples"):
        run_downstream(
            real, None, DownstreamConfig(conditions=["real"], crop_size=32, resolution=16)
        )
    with pytest.raises(PairforgeError, match="--synthetic-fraction 1.0"):
        DownstreamConfig(synthetic_fraction=1.0).validate()
    with pytest.raises(PairforgeError, match="--conditions"):
        DownstreamConfig(conditions=["fake"]).validate()
    assert not math.isnan(DownstreamConfig().lr)
