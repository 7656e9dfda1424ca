"""`pairforge eval fid | stats | downstream` through the real CLI on tiny datasets."""

from __future__ import annotations

import json

import pytest
from test_eval_fixtures import write_dataset
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.errors import PairforgeError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def datasets(tmp_path):
    # Measurement s000 (labeled) is train, s001 (unlabeled) is test.
    real = write_dataset(
        tmp_path / "real", 2, 32, seed=0, labeled=1, splits={"train": 1, "test": 1}
    )
    fake = write_dataset(tmp_path / "fake", 6, 16, seed=1, shift=0.3)
    return real, fake


def test_eval_fid_with_inception_writes_json_and_uses_the_cache(datasets, tmp_path):
    real, fake = datasets
    out = tmp_path / "eval"
    args = [
        "eval",
        "fid",
        str(real),
        str(fake),
        "--out",
        str(out),
        "--crop-size",
        "16",
        "--kid-subsets",
        "3",
        "--json",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    written = json.loads((out / "fid.json").read_text())
    assert printed["rows"] == written["rows"]
    rows = {r["target"]: r for r in written["rows"]}
    assert list(rows) == ["intensity", "depth", "mask", "mean of per-target FIDs, not a metric"]
    # Default reference: the train split only (one measurement -> 4 tiles), not the test one.
    assert rows["intensity"]["n_real"] == 4 and rows["intensity"]["n_fake"] == 6
    assert rows["mask"]["n_real"] == 4
    assert written["real"]["split"] == "train" and written["settings"]["real_split"] == "train"
    assert all(r["fid"] > 0 for r in written["rows"])
    assert written["settings"]["cmap"] == "viridis" and written["settings"]["crop_size"] == 16
    table = (out / "fid.md").read_text()
    assert "| mean of per-target FIDs, not a metric | inception |" in table
    assert f"real reference: split train of {real} (4 images, 4 masks)" in table
    assert len(list((real / ".pairforge-cache").glob("inception-*.npz"))) == 3

    again = CliRunner().invoke(app, args)
    assert all(r["real_stats_cached"] for r in json.loads(again.output)["rows"][:3])


def test_eval_fid_rejects_unknown_colormap(datasets):
    real, fake = datasets
    result = CliRunner().invoke(
        app, ["eval", "fid", str(real), str(fake), "--channels-cmap", "jet"]
    )
    assert isinstance(result.exception, PairforgeError)
    assert "--channels-cmap 'jet'" in str(result.exception)


@pytest.mark.parametrize(
    ("split", "n_masks"), [(None, 4), ("train", 4), ("train,test", 8), ("all", 12)]
)
def test_real_split_option_chooses_the_reference(datasets, tmp_path, split, n_masks):
    _, fake = datasets
    real = write_dataset(
        tmp_path / "real3", 3, 32, seed=2, splits={"train": 1, "val": 1, "test": 1}
    )
    args = ["eval", "stats", str(real), str(fake), "--crop-size", "16", "--json"]
    result = CliRunner().invoke(app, args + ([] if split is None else ["--real-split", split]))
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    # Each labeled 32 px measurement gives 4 tiles of 16 px; the default is the train split.
    assert written["real"]["n_masks"] == n_masks
    assert written["real"]["split"] == (split or "train")
    assert written["settings"]["real_split"] == (split or "train")


def test_unknown_real_split_names_the_flag_and_the_splits(datasets):
    real, fake = datasets
    result = CliRunner().invoke(
        app, ["eval", "fid", str(real), str(fake), "--real-split", "validation"]
    )
    assert isinstance(result.exception, PairforgeError)
    message = str(result.exception)
    assert "--real-split validation" in message and "no split named 'validation'" in message
    assert "['test', 'train']" in message and "'all'" in message


def test_eval_stats_writes_json_and_plots(datasets, tmp_path):
    real, fake = datasets
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["eval", "stats", str(real), str(fake), "--out", str(out), "--crop-size", "16"]
    )
    assert result.exit_code == 0, result.output
    assert "| grain |" in result.output
    written = json.loads((out / "mask_stats.json").read_text())
    assert written["real"]["n_masks"] == 4 and written["fake"]["n_masks"] == 6
    assert sorted(written["plots"]) == sorted(p.name for p in out.glob("mask_stats_*.png"))
    assert len(written["plots"]) == 3


def test_eval_downstream_dry_run_and_bad_budgets(datasets, tmp_path):
    real, fake = datasets
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "eval",
            "downstream",
            str(real),
            str(fake),
            "--out",
            str(tmp_path),
            "--budgets",
            "4,16",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["budgets"] == [4, 16]
    bad = runner.invoke(
        app,
        ["eval", "downstream", str(real), str(fake), "--out", str(tmp_path), "--budgets", "4,x"],
    )
    assert isinstance(bad.exception, PairforgeError) and "--budgets '4,x'" in str(bad.exception)
