"""The report's summary (numbers of its inputs, 'run X' hints), the real vs synthetic row (same
scale, same display size) and the layout rules that keep it inside a laptop screen."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_eval_fixtures import write_dataset
from test_eval_report import FACTORY_SCORES, factory_result, results_dir  # noqa: F401

from pairforge.core.stats import format_difference, mean_ci
from pairforge.eval.factory_compare import COMPARISONS
from pairforge.eval.report import build_report
from pairforge.eval.report_html import STYLE
from pairforge.eval.report_samples import TILE_DISPLAY_PX

pytestmark = pytest.mark.usefixtures("single_thread")


def _section(page: str, anchor: str) -> str:
    match = re.search(f'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def _interval(values) -> str:
    stat = mean_ci(list(values))
    low, high = stat["ci"]
    return f"{100 * stat['mean']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def test_summary_comes_first_and_holds_the_factory_numbers(results_dir, tmp_path):  # noqa: F811
    page = build_report([results_dir], tmp_path / "r.html").read_text()
    assert page.index('<section id="summary">') < page.index('<section id="samples">')
    summary = _section(page, "summary")
    assert 'class="missing"' not in summary
    assert "budget 8: 8 labeled tiles (6 fit + 2 select), 131,072 px, seeds 0, 1, 2" in summary
    assert "from factory.json" in summary
    for method, label in (("baseline", "supervised baseline (labels only)"),
                          ("distill-synthetic", "+ filtered synthetic pairs")):  # fmt: skip
        expected = _interval(FACTORY_SCORES[method].values())
        assert f"<td>{label}</td><td>{expected}</td>" in summary
    row = factory_result()["rows"][0]
    for a, b in COMPARISONS:
        assert f"<td>{a} - {b}</td><td>{format_difference(row[f'{a}_vs_{b}'])}</td>" in summary
    assert "<td>head - baseline</td><td>+7.3 [+3.5, +11.1]: significant gain</td>" in summary
    fid = json.loads((results_dir / "eval" / "fid.json").read_text())
    per_target = [r for r in fid["rows"] if r["kind"] in ("channel", "mask")]
    header = "".join(f"<th>{r['target']}</th>" for r in per_target)
    assert f"<th>FID (lower is closer)</th>{header}" in summary
    cells = "".join(f"<td>{r['fid']:.1f}</td>" for r in per_target)
    assert f"<td>joint (gen)</td>{cells}</tr>" in summary  # pipeline from the manifest
    assert "demo (demo): 14 s (0.2 min), 2 stages" in summary
    for anchor in ("factory", "fid", "timing"):  # each item links to its section
        assert f'<a href="#{anchor}">' in summary and f'<section id="{anchor}">' in page


def test_summary_falls_back_to_few_label_then_seg_results(results_dir, tmp_path):  # noqa: F811
    (results_dir / "eval" / "factory.json").unlink()
    summary = _section(build_report([results_dir], tmp_path / "a.html").read_text(), "summary")
    assert '<a href="#few-label">Labels used</a>' in summary and "from few_label.json" in summary
    assert f"<td>diffusion-feature head</td><td>{_interval([0.72, 0.75, 0.75])}</td>" in summary
    assert "<td>head - baseline</td><td>+3.0 [+0.5, +5.5]: significant gain</td>" in summary

    seg_only = tmp_path / "seg"
    seg_only.mkdir()
    for seed, miou in enumerate((0.5, 0.6, 0.7)):
        labels = {"budget": "4", "tiles": 4, "fit_tiles": 3, "select_tiles": 1, "pixels": 4096,
                  "seed": seed, "fingerprint": "ab"}  # fmt: skip
        result = {"split": "test", "num_images": 8, "mean_iou": miou, "labels": labels}
        (seg_only / f"seg_head-b4-s{seed}.json").write_text(json.dumps(result))
    summary = _section(build_report([seg_only], tmp_path / "b.html").read_text(), "summary")
    assert "budget 4: 4 labeled tiles (3 fit + 1 select), 4,096 px, seeds 0, 1, 2" in summary
    expected = _interval([0.5, 0.6, 0.7])
    assert f"<td>diffusion-feature head</td><td>4</td><td>3</td><td>{expected}</td>" in summary
    assert "No paired comparison: run `pairforge factory`" in summary


def test_missing_inputs_give_run_hints(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = _section(build_report([empty], tmp_path / "r.html").read_text(), "summary")
    assert summary.count('class="missing"') == 4
    for hint in ("run `pairforge factory --labels N`",
                 "no factory.json, few_label.json or seg_*.json found; run `pairforge factory`",
                 "no fid.json found; run `pairforge eval fid REAL_DIR FAKE_DIR --out EVAL_DIR`",
                 "no demo.json or factory_run.json found; run `pairforge demo`"):  # fmt: skip
        assert hint in summary
    assert len(re.findall(r'<div class="\w+"><h3><a href="#[\w-]+">', summary)) == 4


def _figure_images(page: str, side: str) -> list[tuple[str, str, Image.Image]]:
    figure = re.search(f'<figure class="{side}">(.*?)</figure>', page, re.S).group(1)
    tags = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)" width="(\d+)" '
                      r'height="(\d+)">', figure)  # fmt: skip
    return [(w, h, Image.open(io.BytesIO(base64.b64decode(data)))) for data, w, h in tags]


def test_real_beside_synthetic_at_one_scale_and_size(results_dir, tmp_path):  # noqa: F811
    page = build_report([results_dir], tmp_path / "r.html").read_text()
    samples = _section(page, "samples")
    real, synthetic = _figure_images(samples, "real"), _figure_images(samples, "synthetic")
    assert len(real) == len(synthetic) == 4  # one real and one synthetic tile per pair shown
    shown = str(TILE_DISPLAY_PX)
    assert {(w, h) for w, h, _ in real + synthetic} == {(shown, shown)}
    # generated pairs are 16 px: the real tiles are 16 px crops of the 32 px measurements
    assert {img.size for _, _, img in real + synthetic} == {(16, 16)}
    assert "real: 16 px crops of real at 16 px" in samples


def test_real_tiles_take_the_generators_crop_size_down_to_its_resolution(tmp_path):
    real_dir = write_dataset(tmp_path / "real", 3, 32, seed=0)
    gen_dir = write_dataset(tmp_path / "gen", 4, 16, seed=1)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "pairforge.json").write_text(json.dumps({"crop_size": 32, "resolution": 16}))
    manifest = {"pipeline": "joint", "checkpoints": {"joint": {"path": str(run)}}}
    (gen_dir / "manifest.json").write_text(json.dumps(manifest))
    page = build_report([real_dir, gen_dir], tmp_path / "r.html").read_text()
    real, synthetic = _figure_images(page, "real"), _figure_images(page, "synthetic")
    assert len(real) == len(synthetic) == 3  # one 32 px crop per real measurement
    assert {img.size for _, _, img in real + synthetic} == {(16, 16)}
    assert "real: 32 px crops of real at 16 px (area / majority downsampling x2)" in page

    alone = build_report([gen_dir], tmp_path / "alone.html").read_text()
    assert "no real dataset to compare" in alone and "pairforge report REAL_DIR" in alone


def test_layout_fits_a_laptop_screen(results_dir, tmp_path):  # noqa: F811
    rules = re.sub(r"\s+", " ", STYLE)
    assert re.search(r"body \{[^}]*max-width: 1100px", rules)
    assert re.search(r"\.scroll \{[^}]*overflow-x: auto", rules)
    assert re.search(r"img \{[^}]*max-width: 100%", rules)
    assert re.search(r"pre \{[^}]*overflow-x: auto", rules)
    page = build_report([results_dir], tmp_path / "r.html").read_text()
    assert page.count("<table>") == page.count('<div class="scroll"><table>') > 5
    assert f"<style>{STYLE}</style>" in page and "name='viewport'" in page


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)"
)
def test_page_fits_1366_px_in_a_real_browser(results_dir, tmp_path):  # noqa: F811
    page = build_report([results_dir], tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,6000",
               f"--screenshot={shot}", page.as_uri()]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    drawn = np.where((pixels.sum(axis=2) < 750).any(axis=0))[0]
    # Content inside the 1100 px column (+ padding), centered: nothing runs to the right edge,
    # where a page wider than the window would be cut off.
    assert drawn.min() > 100 and drawn.max() < 1366 - 100, (drawn.min(), drawn.max())


def test_factory_folder_real_data_and_empty_filtered_sets(tmp_path):
    """In a factory folder the pseudo-labeled sets are not 'real', the chain's record names the
    real data, and a filtered set that kept no pair says so instead of a missing-folder error."""
    out = tmp_path / "factory"
    real_dir = write_dataset(out / "data", 3, 32, seed=0)
    pseudo = write_dataset(out / "pseudo" / "b8-s0", 3, 32, seed=2)
    (pseudo / "pseudolabel.json").write_text(json.dumps({"kept_fraction": 0.9}))
    gen_dir = write_dataset(out / "synthetic" / "b8-s0", 4, 16, seed=1)
    (gen_dir / "manifest.json").write_text(json.dumps({"pipeline": "joint", "checkpoints": {}}))
    empty = out / "synthetic" / "b8-s0-filtered"
    empty.mkdir(parents=True)
    shutil.copy(gen_dir / "dataset.yaml", empty / "dataset.yaml")
    (empty / "manifest.json").write_text(json.dumps({"pipeline": "joint", "checkpoints": {}}))
    (empty / "filter.json").write_text(
        json.dumps({"kept": 0, "total": 4, "threshold": 0.9, "set": str(gen_dir)})
    )
    page = build_report([out], tmp_path / "r.html").read_text()
    assert f"real: 16 px crops of {real_dir.name}" in page  # the real data, not the pseudo set
    assert "kept none of the 4 pairs" in page and "folder not found" not in page
    # The chain's own record wins over guessing.
    (out / "factory_run.json").write_text(json.dumps({"data": str(pseudo), "seconds": {}}))
    page = build_report([out], tmp_path / "r2.html").read_text()
    assert f"real: 16 px crops of {pseudo.name}" in page
