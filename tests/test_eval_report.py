"""The HTML report: every section rendered from a tiny fake results dir; missing ones stated."""

from __future__ import annotations

import json
import re

import pytest
import typer
from test_eval_fid import MeanColorFeatures
from test_eval_fixtures import write_dataset
from typer.testing import CliRunner

from pairforge.core.stats import mean_ci, paired_difference
from pairforge.errors import PairforgeError
from pairforge.eval.cli import report_command
from pairforge.eval.downstream import summarize_runs, write_downstream
from pairforge.eval.factory_compare import COMPARISONS, write_factory
from pairforge.eval.few_label import write_few_label
from pairforge.eval.fid import MEAN_ROW_LABEL, evaluate_fid
from pairforge.eval.mask_stats import compare_mask_stats, plot_mask_stats
from pairforge.eval.report import build_report, collect_results
from pairforge.eval.sets import load_eval_set

pytestmark = pytest.mark.usefixtures("single_thread")


FACTORY_SCORES = {  # test mIoU per method and seed (budget 8)
    "baseline": {0: 0.60, 1: 0.62, 2: 0.61},
    "head": {0: 0.66, 1: 0.69, 2: 0.70},
    "distill": {0: 0.68, 1: 0.70, 2: 0.73},
    "distill-synthetic": {0: 0.69, 1: 0.69, 2: 0.74},
}


def factory_result() -> dict:
    """A factory.json of one budget (8 tiles: 6 fit + 2 select) and three seeds."""
    row = {"budget": "8", "tiles": 8, "fit_tiles": 6, "select_tiles": 2, "pixels": 131072,
           "seeds": [0, 1, 2], "per_class": {}, "chain": {}}  # fmt: skip
    row.update({m: mean_ci(list(v.values())) for m, v in FACTORY_SCORES.items()})
    for a, b in COMPARISONS:
        row[f"{a}_vs_{b}"] = paired_difference(FACTORY_SCORES[a], FACTORY_SCORES[b])
    return {"metric": "factory", "classes": [], "rows": [row], "notes": ["paired per seed"]}


@pytest.fixture
def results_dir(tmp_path):
    """DEMO/{real, gen, eval, run}: what the demo leaves behind, made with tiny stand-ins."""
    demo = tmp_path / "demo"
    real_dir = write_dataset(demo / "real", 2, 32, seed=0)
    gen_dir = write_dataset(demo / "gen", 6, 16, seed=1)
    (gen_dir / "manifest.json").write_text(json.dumps({"pipeline": "joint", "samples": [1, 2]}))
    real = load_eval_set(real_dir, crop_size=16)
    fake = load_eval_set(gen_dir, normalizer=real.normalizer)
    eval_dir = demo / "eval"
    eval_dir.mkdir()
    fid = evaluate_fid(real, fake, extractor=MeanColorFeatures(), kid_subsets=2)
    (eval_dir / "fid.json").write_text(json.dumps(fid))
    stats = compare_mask_stats(real, fake)
    plot_mask_stats(stats, eval_dir)
    (eval_dir / "mask_stats.json").write_text(json.dumps(stats))
    runs = [
        {
            "condition": c,
            "budget": b,
            "seed": s,
            "n_real": b or 0,
            "n_synthetic": 4 if c != "real" else 0,
            "test_miou": 0.5 + 0.01 * s,
            "best_val_miou": 0.6,
        }
        for c, b in (("synthetic", None), ("real", 4), ("mixed", 4))
        for s in range(3)
    ]
    downstream = {
        "metric": "downstream",
        "settings": {"steps": 2},
        "data": {
            "n_test_tiles": 8,
            "test_measurements": ["s004"],
            "model_selection": "val",
            "real": str(real_dir),
            "synthetic": str(gen_dir),
        },
        "runs": runs,
        "summary": summarize_runs(runs),
        "notes": [],
    }
    write_downstream(downstream, eval_dir)
    few_label = {
        "rows": [
            {"budget": "8", "tiles": 8, "fit_tiles": 6, "select_tiles": 2, "pixels": 131072,
             "seeds": [0, 1, 2], "baseline": mean_ci([0.70, 0.72, 0.71]),
             "head": mean_ci([0.72, 0.75, 0.75]),
             "head_vs_baseline": paired_difference({0: 0.72, 1: 0.75, 2: 0.75},
                                                   {0: 0.70, 1: 0.72, 2: 0.71})}
        ],
        "notes": ["paired per seed"],
    }  # fmt: skip
    write_few_label(few_label, eval_dir)
    write_factory(factory_result(), eval_dir)
    for name, miou in (("seg_head", 0.8), ("seg_baseline", 0.6)):
        seg = {"split": "test", "num_images": 8, "mean_iou": miou,
               "per_class_iou": {"binder": miou + 0.1, "grain": miou - 0.1}}  # fmt: skip
        (eval_dir / f"{name}.json").write_text(json.dumps(seg))
    timings = {"seconds": {"train joint": 12.5, "report": 1.0}, "total_seconds": 13.5}
    (demo / "demo.json").write_text(json.dumps(timings))
    run_dir = demo / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "pairforge.json").write_text("{}")
    (run_dir / "config.yaml").write_text("task: joint\nresolution: 16\n")
    (run_dir / "samples").mkdir()
    (run_dir / "samples" / "step-00000010.png").write_bytes(
        (eval_dir / "downstream.png").read_bytes()
    )
    return demo


def test_collect_finds_everything(results_dir):
    found = collect_results([results_dir])
    assert [p.name for p, _ in found.fid] == ["eval"]
    assert [p.name for p, _ in found.mask_stats] == ["eval"]
    assert [p.name for p, _ in found.downstream] == ["eval"]
    assert [p.name for p in found.runs] == ["run"]
    assert sorted(p.name for p in found.datasets) == ["gen", "real"]


def test_report_renders_every_section(results_dir, tmp_path):
    out = build_report([results_dir], tmp_path / "report.html", title="tiny demo")
    page = out.read_text()
    assert "Missing:" not in page
    for anchor in ("summary", "samples", "fid", "mask-stats", "factory", "few-label",
                   "segmentation", "downstream", "timing"):  # fmt: skip
        assert f'<section id="{anchor}">' in page
    # seg results without "labels" (older pairforge) say so instead of inventing a budget
    assert (
        "<td>diffusion-feature head</td><td>test</td><td>8</td><td>unknown</td><td>80.000</td>"
    ) in page
    assert (
        "<td>8 (6 + 2) / 131,072</td><td>3</td><td>71.0 +- 1.0</td><td>74.0 +- 1.7</td>"
    ) in page
    assert "<td>+3.0 [+0.5, +5.5]: significant gain</td>" in page
    assert "<td>supervised baseline</td>" in page and "<td>IoU grain</td>" not in page
    assert "<th>IoU grain</th>" in page and "<td>train joint</td><td>12.500</td>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # 2 dataset grids + run preview + 3 mask-statistics plots + downstream, few-label and factory
    # plots + 4 real and 4 synthetic side-by-side tiles.
    assert len(images) == 17
    assert all(len(data) > 200 for data in images)  # real PNGs (the tiles are 16 px ones)
    assert "<td>intensity</td><td>inception</td>" in page
    fid = json.loads((results_dir / "eval" / "fid.json").read_text())
    for row in fid["rows"]:  # every FID row of the JSON, with its label and number
        assert f"<td>{row['target']}</td><td>inception</td><td>{row['fid']:.3f}</td>" in page
    assert "<td>mean of per-target FIDs, not a metric</td><td>inception</td>" in page
    assert f"real reference: split all of {results_dir / 'real'}" in page
    assert "<td>mixed</td><td>4</td><td>4</td><td>3</td><td>51.000</td>" in page
    assert "task: joint" in page and "&quot;pipeline&quot;: &quot;joint&quot;" in page
    assert 'src="http' not in page and "<link" not in page  # self-contained


def test_fid_written_before_the_relabel_shows_the_mean_row_labeled(results_dir, tmp_path):
    path = results_dir / "eval" / "fid.json"
    old = json.loads(path.read_text())
    old["real"].pop("split")  # older results: no split recorded (they used every sample)
    for row in old["rows"]:
        if row["target"] == MEAN_ROW_LABEL:
            row["target"] = row["kind"] = "average"
    path.write_text(json.dumps(old))
    page = build_report([results_dir], tmp_path / "report.html").read_text()
    assert f"<td>{MEAN_ROW_LABEL}</td>" in page and "<td>average</td>" not in page
    assert "real reference: split all of" in page


def test_missing_sections_are_stated(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report([empty], tmp_path / "r.html").read_text()
    # 8 sections + 4 summary items (the summary's boxes say what to run, too)
    assert page.count('class="missing"') == 12
    assert "pairforge eval fid REAL_DIR FAKE_DIR --out EVAL_DIR" in page
    assert "pairforge eval downstream" in page
    with pytest.raises(PairforgeError, match="nowhere: not found"):
        build_report([tmp_path / "nowhere"], tmp_path / "r.html")


def test_report_command_is_a_typer_command(results_dir, tmp_path):
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)  # two commands: typer keeps "report" as a subcommand
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(app, ["report", str(results_dir / "eval"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "wrote" in result.output
    page = out.read_text()
    # The datasets named in the eval JSON files are found and shown: only the demo timings
    # (beside, not inside, the eval folder) are missing, in their section and the summary.
    assert page.count('class="missing"') == 2
    assert "no demo.json or factory_run.json found; run `pairforge demo`" in page
    assert "/demo/gen" in page
