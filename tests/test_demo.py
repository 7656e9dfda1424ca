"""End to end: `pairforge demo --quick` runs every stage and writes a report with every section."""

import json
import math

import pytest
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.demo import DemoPlan
from pairforge.eval.fid import MEAN_ROW_KIND, MEAN_ROW_LABEL


def test_demo_dry_run_prints_the_plan():
    result = CliRunner().invoke(app, ["demo", "--dry-run", "--minutes", "30"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    full = DemoPlan.full(15.0)
    assert plan["train_minutes"]["joint"] == pytest.approx(2 * full.train_minutes["joint"])
    assert plan["grain_preset"] == "demo"
    # The neutral image-only DDPM is trained too, on a short budget (2.5 of 15 minutes).
    assert plan["configs"]["image"] == "demo-image"
    assert full.train_minutes["image"] == pytest.approx(2.5)
    assert plan["train_minutes"]["image"] == pytest.approx(5.0)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for path in [
        "data/dataset.yaml",
        "runs/image/model/pairforge.json",
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
    assert json.loads((out / "runs/image/model/pairforge.json").read_text())["task"] == "image"
    # The stages print rerunnable commands; head and baseline read the image-only DDPM.
    image_run = str(out / "runs" / "image")
    assert f"$ pairforge seg fit --run {image_run} " in result.output
    assert f"$ pairforge seg baseline --run {image_run} " in result.output
    assert json.loads((out / "seg/head/head.json").read_text())["source"] == image_run

    head = json.loads((out / "eval/seg/seg_head.json").read_text())
    per_class = [v for v in head["per_class_iou"].values() if v is not None]
    assert len(head["per_class_iou"]) == 3 and head["split"] == "test"
    assert head["mean_iou"] == pytest.approx(sum(per_class) / len(per_class), abs=1e-9)
    timings = json.loads((out / "demo.json").read_text())["seconds"]
    assert {"train image", "train joint", "generate two-stage", "segmentation head"} <= set(timings)

    html = (out / "report.html").read_text()
    for section in ("FID", "Mask statistics", "Downstream", "Segmentation with few labels"):
        assert section in html, section
    assert (
        f"<td>diffusion-feature head</td><td>test</td><td>{head['num_images']}</td>"
        f"<td>{100 * head['mean_iou']:.3f}</td>"
    ) in html
    for pipeline in ("joint", "two-stage"):
        fid = json.loads((out / "eval" / pipeline / "fid.json").read_text())
        # One neutral network for the domain row of both pipelines; train split as reference.
        assert fid["settings"]["domain"]["run"].endswith("runs/image")
        assert fid["settings"]["domain"]["task"] == "image"
        assert fid["real"]["split"] == "train" and fid["settings"]["real_split"] == "train"
        rows = {r["kind"]: r for r in fid["rows"]}
        assert rows[MEAN_ROW_KIND]["target"] == MEAN_ROW_LABEL
        assert math.isfinite(rows["domain"]["fid"])
        for row in fid["rows"]:  # the report shows the numbers of the JSON
            assert f"<td>{row['fid']:.3f}</td>" in html, (pipeline, row["target"])
    assert f"<td>{MEAN_ROW_LABEL}</td>" in html
    assert "real reference: split train of" in html
    assert "(task image)" in html
