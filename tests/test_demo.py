"""End to end: `pairforge demo --quick` runs every stage and writes a report with every section."""

import json

import pytest
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.demo import DemoPlan


def test_demo_dry_run_prints_the_plan():
    result = CliRunner().invoke(app, ["demo", "--dry-run", "--minutes", "30"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    full = DemoPlan.full(15.0)
    assert plan["train_minutes"]["joint"] == pytest.approx(2 * full.train_minutes["joint"])
    assert plan["grain_preset"] == "demo"


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for path in [
        "data/dataset.yaml",
        "runs/joint/model/pairforge.json",
        "runs/mask/model/pairforge.json",
        "runs/sdm/model/pairforge.json",
        "synthetic/joint/manifest.json",
        "synthetic/two-stage/manifest.json",
        "seg/head",
        "eval/seg/seg_head.json",
        "eval/seg/seg_baseline.json",
        "eval/joint/fid.json",
        "eval/two-stage/fid.json",
        "eval/joint/mask_stats.json",
        "eval/joint/downstream.json",
        "report.html",
        "demo.json",
    ]:
        assert (out / path).exists(), path
    head = json.loads((out / "eval/seg/seg_head.json").read_text())
    assert 0.0 <= head["mean_iou"] <= 1.0
    timings = json.loads((out / "demo.json").read_text())["seconds"]
    assert {"train joint", "generate two-stage", "segmentation head"} <= set(timings)
    html = (out / "report.html").read_text()
    for section in ("FID", "Mask statistics", "Downstream"):
        assert section in html, section
