"""End to end: `pairforge demo --quick` runs every stage and writes a report with every section."""

import json
import math

import pytest
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.demo import DemoPlan, demo_stages
from pairforge.eval.fid import MEAN_ROW_KIND, MEAN_ROW_LABEL


def test_demo_dry_run_prints_the_plan():
    result = CliRunner().invoke(app, ["demo", "--dry-run", "--minutes", "60"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    full = DemoPlan.full(30.0)
    assert plan["train_minutes"]["joint"] == pytest.approx(2 * full.train_minutes["joint"])
    assert plan["joint_minutes"] == pytest.approx(2 * full.joint_minutes)
    assert plan["grain_preset"] == "demo"
    # The neutral image-only DDPM is trained too, on a short budget (2.5 of 30 minutes).
    assert plan["configs"]["image"] == "demo-image"
    assert full.train_minutes["image"] == pytest.approx(2.5)
    assert plan["train_minutes"]["image"] == pytest.approx(5.0)
    # Budget-honest by default: 8, 32 and all labeled tiles, 3 seeds.
    assert plan["budgets"] == ["8", "32", "all"] and plan["seeds"] == [0, 1, 2]
    result = CliRunner().invoke(
        app, ["demo", "--dry-run", "--seeds", "0,1,2,3,4", "--budgets", "8,ALL"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["seeds"] == [0, 1, 2, 3, 4] and plan["budgets"] == ["8", "all"]
    result = CliRunner().invoke(app, ["demo", "--dry-run", "--budgets", "eight"])
    assert result.exit_code != 0 and "--budgets 'eight'" in str(result.exception)


def test_demo_stages_keep_every_figure_inside_its_budget(tmp_path):
    """Generators, heads and the downstream experiment of one (budget, seed) read the same
    budget; the head reads the image-only DDPM; mask and SDM train on the 'all' budget."""
    plan = DemoPlan.full()
    stages = {stage.name: stage.args for stage in demo_stages(tmp_path, plan)}
    image_run = str(tmp_path / "runs" / "image")
    for budget in ("8", "32"):
        for seed in (0, 1, 2):
            train = stages[f"train joint-b{budget}-s{seed}"]
            assert f"data.labels={budget}" in train and f"data.label_seed={seed}" in train
            fit = stages[f"segmentation head b{budget}-s{seed}"]
            assert fit[fit.index("--run") + 1] == image_run
            assert fit[fit.index("--labels") + 1] == budget
            assert fit[fit.index("--label-seed") + 1] == str(seed)
    assert "train joint-ball-s1" not in stages  # the 'all' tiles are the same at every seed
    assert "--pixels-per-image" not in stages["segmentation head b32-s0"]
    fit_all = stages["segmentation head ball-s2"]
    assert fit_all[fit_all.index("--pixels-per-image") + 1] == "128"
    assert "data.labels=all" in stages["train mask"] and "data.labels=all" in stages["train sdm"]
    assert not any("data.labels" in a for a in stages["train image"])
    downstream = stages["downstream"]
    assert downstream[downstream.index("--budgets") + 1] == "8,32,all"
    assert downstream[downstream.index("--seeds") + 1] == "0,1,2"
    assert sum(a.startswith(str(tmp_path / "synthetic" / "joint-")) for a in downstream) == 7


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for path in [
        "data/dataset.yaml",
        "runs/image/model/pairforge.json",
        "runs/joint-b4-s0/model/pairforge.json",
        "runs/joint-ball-s0/model/pairforge.json",
        "runs/mask/model/pairforge.json",
        "runs/sdm/model/pairforge.json",
        "synthetic/joint-b4-s0/manifest.json",
        "synthetic/joint-ball-s0/manifest.json",
        "synthetic/two-stage/manifest.json",
        "seg/head-b4-s0",
        "eval/seg/seg_head-b4-s0.json",
        "eval/seg/seg_head-ball-s0.json",
        "eval/joint/fid.json",
        "eval/two-stage/fid.json",
        "eval/joint/mask_stats.json",
        "eval/downstream/downstream.json",
        "eval/few-label/few_label.json",
        "eval/few-label/few_label.png",
        "report.html",
        "demo.json",
    ]:
        assert (out / path).exists(), path
    assert json.loads((out / "runs/image/model/pairforge.json").read_text())["task"] == "image"
    joint = json.loads((out / "runs/joint-b4-s0/model/pairforge.json").read_text())
    assert len(joint["label_budget"]["tiles"]) == 4 and joint["label_budget"]["seed"] == 0
    # The stages print rerunnable commands; the heads read the image-only DDPM.
    image_run = str(out / "runs" / "image")
    assert f"$ pairforge seg fit --run {image_run} " in result.output
    assert json.loads((out / "seg/head-b4-s0/head.json").read_text())["source"] == image_run

    head = json.loads((out / "eval/seg/seg_head-b4-s0.json").read_text())
    per_class = [v for v in head["per_class_iou"].values() if v is not None]
    assert len(head["per_class_iou"]) == 3 and head["split"] == "test"
    assert head["mean_iou"] == pytest.approx(sum(per_class) / len(per_class), abs=1e-9)
    assert head["labels"]["tiles"] == 4 and head["labels"]["pixels"] == 4 * 32 * 32
    few = json.loads((out / "eval/few-label/few_label.json").read_text())
    assert [row["budget"] for row in few["rows"]] == ["4", "all"]
    row = few["rows"][0]
    assert row["tiles"] == 4 and row["head"]["mean"] == pytest.approx(head["mean_iou"])
    assert row["head_vs_baseline"]["differences"] == [
        pytest.approx(head["mean_iou"] - row["baseline"]["mean"])
    ]
    timings = json.loads((out / "demo.json").read_text())["seconds"]
    assert {"train image", "train joint-b4-s0", "generate two-stage", "downstream"} <= set(timings)

    html = (out / "report.html").read_text()
    for section in ("FID", "Mask statistics", "Downstream", "Segmentation with few labels"):
        assert section in html, section
    assert (
        f"<td>diffusion-feature head (b4-s0)</td><td>test</td><td>{head['num_images']}</td>"
        f"<td>4 / 4,096</td><td>{100 * head['mean_iou']:.3f}</td>"
    ) in html
    assert "Few labels: head and real + synthetic vs the baseline" in html
    assert "<td>4 (3 + 1) / 4,096</td><td>1</td>" in html  # budget 4: 3 fit + 1 select tiles
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
