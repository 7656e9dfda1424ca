"""Budget honesty of `eval downstream`: which labels each figure read, the synthetic sets'
budgets, paired intervals, the table, the report and the CLI flags."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image
from test_eval_downstream import write_set
from test_eval_fixtures import write_dataset
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.core.budgets import manifest_label_sources, matches_budget
from pairforge.data.budget import make_budget
from pairforge.data.dataset import load_dataset
from pairforge.errors import PairforgeError
from pairforge.eval.downstream import DownstreamConfig, run_downstream, write_downstream
from pairforge.eval.downstream_summary import (
    compare_conditions,
    format_downstream_table,
    summarize_runs,
)
from pairforge.eval.report import build_report

pytestmark = pytest.mark.usefixtures("single_thread_module")  # module fixtures train too

# Real, synthetic-only and mixed at two budgets and two seeds; tiny and quick.
TINY = dict(
    budgets=[4, 8],
    seeds=[0, 1],
    steps=6,
    batch_size=4,
    crop_size=16,
    resolution=16,
    max_synthetic=4,
    encoder="mobilenet_v2",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("budgets")
    real = write_dataset(root / "real", 6, 48, seed=0, splits={"train": 3, "val": 1, "test": 2})
    sets = {
        (size, seed): write_set(root / f"syn-{size}-{seed}", real, size, seed)
        for size in (4, 8)
        for seed in (0, 1)
    }
    return real, sets


@pytest.fixture(scope="module")
def baseline(data):
    real, sets = data
    return run_downstream(real, list(sets.values()), DownstreamConfig(**TINY), log=None)


def _without_time(runs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]


def _rewrite_masks(folder, ids, change):
    """Replace the mask of each id with change(id, mask)."""
    ds = load_dataset(folder)
    for sample_id in ids:
        mask = change(sample_id, ds.read_mask(sample_id))
        Image.fromarray(mask.astype(np.uint8)).save(folder / "masks" / f"{sample_id}.png")


def test_test_labels_change_only_test_scores(data, baseline, tmp_path):
    real, sets = data
    flipped = shutil.copytree(real, tmp_path / "flipped")
    _rewrite_masks(flipped, load_dataset(real).ids("test"), lambda _, m: 1 - m)
    result = run_downstream(flipped, list(sets.values()), DownstreamConfig(**TINY), log=None)
    test_keys = {"test_miou", "test_per_class_iou", "seconds"}
    for first, second in zip(baseline["runs"], result["runs"], strict=True):
        for key in set(first) - test_keys:
            assert first[key] == second[key], key  # selection, epochs, labels: bit-identical
    assert [r["test_miou"] for r in baseline["runs"]] != [r["test_miou"] for r in result["runs"]]
    assert baseline["data"]["budgets"] == result["data"]["budgets"]


def test_labels_outside_every_budget_change_nothing(data, baseline, tmp_path):
    real, sets = data
    used: dict[str, set] = {}
    for budget in baseline["data"]["budgets"]:
        for sample_id, y, x in budget["tiles"]:
            used.setdefault(sample_id, set()).add((y, x))

    def flip_outside(sample_id, mask):
        inside = np.zeros(mask.shape, dtype=bool)
        for y, x in used.get(sample_id, ()):
            inside[y : y + 16, x : x + 16] = True
        assert not inside.all()  # some train labels lie outside every budget: the test can fail
        return np.where(inside, mask, 1 - mask)

    changed = shutil.copytree(real, tmp_path / "changed")
    _rewrite_masks(changed, load_dataset(real).ids("train"), flip_outside)
    assert load_dataset(changed).read_mask("s000").tolist() != (
        load_dataset(real).read_mask("s000").tolist()
    )
    result = run_downstream(changed, list(sets.values()), DownstreamConfig(**TINY), log=None)
    assert _without_time(result["runs"]) == _without_time(baseline["runs"])
    assert result["summary"] == baseline["summary"]
    assert result["comparisons"] == baseline["comparisons"]


def test_budgets_are_nested_and_recorded_in_the_result(data, baseline):
    budgets = {(b["label"], b["seed"]): b for b in baseline["data"]["budgets"]}
    assert set(budgets) == {("4", 0), ("8", 0), ("4", 1), ("8", 1)}
    for seed in (0, 1):
        small = {tuple(t) for t in budgets[("4", seed)]["tiles"]}
        large = {tuple(t) for t in budgets[("8", seed)]["tiles"]}
        assert len(small) == 4 and len(large) == 8 and small < large
    assert {tuple(t) for t in budgets[("8", 0)]["tiles"]} != {
        tuple(t) for t in budgets[("8", 1)]["tiles"]
    }
    # The 'real' runs of one budget read its tiles: fit crops 3 (of 4), selection on 1.
    real4 = [r for r in baseline["runs"] if r["condition"] == "real" and r["budget"] == "4"]
    assert [(r["n_real"], r["labels"]["select_tiles"]) for r in real4] == [(3, 1), (3, 1)]


def test_a_set_from_no_budget_or_another_seeds_budget_is_refused(data, tmp_path):
    real, sets = data
    config = DownstreamConfig(**{**TINY, "budgets": [4], "seeds": [0]})
    unbudgeted = write_set(tmp_path / "unbudgeted", real, None, 0, budget=None)
    with pytest.raises(PairforgeError) as err:
        run_downstream(real, [sets[(4, 0)], unbudgeted], config, log=None)
    text = str(err.value)
    assert f"synthetic set {unbudgeted}" in text
    assert "every mask of its split (no label budget)" in text
    assert "4 labeled tiles of 16 px (3 fit + 1 select) of split 'train' of 'real', seed 0" in text
    # A set made from seed 1's budget, evaluated at seed 0 only: both budgets are named.
    with pytest.raises(PairforgeError) as err:
        run_downstream(real, [sets[(4, 0)], sets[(4, 1)]], config, log=None)
    text = str(err.value)
    assert f"synthetic set {sets[(4, 1)]}" in text and "'real', seed 1" in text
    assert "none of the budgets evaluated: [4, seed 0]" in text and "'real', seed 0" in text


def test_a_budget_without_its_set_names_the_fix(data):
    real, sets = data
    config = DownstreamConfig(**{**TINY, "budgets": [4], "seeds": [0, 1]})
    with pytest.raises(PairforgeError) as err:
        run_downstream(real, [sets[(4, 0)]], config, log=None)
    text = str(err.value)
    assert "budget 4 of seed 1" in text and str(sets[(4, 0)]) in text
    assert "--set data.labels=4 --set data.label_seed=1" in text
    # Real-only needs no set at all.
    only_real = DownstreamConfig(**{**TINY, "budgets": [4], "seeds": [0], "conditions": ["real"]})
    (run,) = run_downstream(real, [], only_real, log=None)["runs"]
    assert run["synthetic_set"] is None and run["labels"]["tiles"] == 4


def test_sets_that_cannot_be_checked_are_refused(data, tmp_path):
    real, _ = data
    plain = write_dataset(tmp_path / "plain", 4, 16, seed=3)
    with pytest.raises(PairforgeError, match="manifest.json: not found; which labels"):
        manifest_label_sources(plain)
    (plain / "manifest.json").write_text(json.dumps({"pipeline": "joint"}))
    with pytest.raises(PairforgeError, match="no checkpoints recorded; which labels"):
        run_downstream(real, [plain], DownstreamConfig(**TINY), log=None)
    (plain / "manifest.json").write_text(
        json.dumps({"checkpoints": {"joint": {"task": "joint"}}, "mask_source": "/masks"})
    )
    with pytest.raises(PairforgeError, match="copied from /masks"):
        manifest_label_sources(plain)


def test_label_sources_of_a_manifest(data, tmp_path):
    real, _ = data
    ds = load_dataset(real)
    budget = make_budget(ds, 4, 0, 16)
    folder = tmp_path / "auto"
    folder.mkdir()
    manifest = {
        "checkpoints": {
            "image": {"task": "image", "reads_masks": False, "label_budget": None},
            "old-joint": {"task": "joint", "path": "/runs/j", "label_budget": budget.to_dict()},
        },
        "head": {"sha256": "ab", "label_budget": budget.to_dict()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sources = manifest_label_sources(folder)
    # The image-only run read no masks; an older entry without reads_masks: its task decides.
    assert [(s.role, s.path) for s in sources] == [("old-joint", "/runs/j"), ("head", None)]
    assert matches_budget(sources, budget)
    # The 'all' budget of seed 1 holds the same tiles as that of seed 0: it matches.
    all_budget = make_budget(ds, None, 0, 16)
    manifest["checkpoints"]["old-joint"]["label_budget"] = all_budget.to_dict()
    manifest["head"]["label_budget"] = all_budget.to_dict()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert matches_budget(manifest_label_sources(folder), make_budget(ds, None, 1, 16))
    assert not matches_budget(manifest_label_sources(folder), budget)
    manifest["head"]["label_budget"] = None  # the head read every mask: no budget matches
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not matches_budget(manifest_label_sources(folder), all_budget)


def test_an_all_set_serves_every_seed(data, tmp_path):
    real, _ = data
    everything = write_set(tmp_path / "syn-all", real, None, 0)
    config = DownstreamConfig(
        **{**TINY, "budgets": ["all"], "seeds": [0, 1], "conditions": ["real", "mixed"]}
    )
    result = run_downstream(real, [everything], config, log=None)
    mixed = [r for r in result["runs"] if r["condition"] == "mixed"]
    assert [r["synthetic_set"] for r in mixed] == [str(everything)] * 2
    assert {r["labels"]["tiles"] for r in result["runs"]} == {27}  # 3 measurements x 9 tiles
    assert {r["labels"]["budget"] for r in result["runs"]} == {"all"}
    budgets = result["data"]["budgets"]
    assert budgets[0]["tiles"] != budgets[1]["tiles"]  # another draw order: other select tiles
    assert sorted(map(tuple, budgets[0]["tiles"])) == sorted(map(tuple, budgets[1]["tiles"]))


def _hand_runs(differences: dict[str, list[float]]) -> list[dict]:
    """Real runs at 0.0 and mixed runs at the given differences, per budget and seed."""
    runs = []
    for budget, values in differences.items():
        labels = {"budget": budget, "tiles": int(budget), "fit_tiles": int(budget) - 1,
                  "select_tiles": 1, "pixels": int(budget) * 256, "tile_size": 16,
                  "split": "train"}  # fmt: skip
        for seed, value in enumerate(values):
            for condition, miou in (("real", 0.0), ("mixed", value)):
                runs.append(
                    {"condition": condition, "budget": budget, "seed": seed, "n_real": 3,
                     "n_synthetic": 0 if condition == "real" else 3, "test_miou": miou,
                     "best_select_miou": 0.5, "labels": {**labels, "seed": seed}}
                )  # fmt: skip
    return runs


def test_paired_interval_is_the_t_interval_and_the_table_says_so(tmp_path):
    runs = _hand_runs({"4": [1.0, 2.0, 3.0], "8": [0.10, 0.11, 0.12]})
    comparisons = {c["budget"]: c for c in compare_conditions(runs)}
    wide = comparisons["4"]
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n) = 2.484
    assert wide["mean"] == pytest.approx(2.0, abs=1e-12) and wide["seeds"] == [0, 1, 2]
    assert wide["ci"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-9)
    assert wide["verdict"] == "no significant difference"  # the interval holds 0
    assert comparisons["8"]["verdict"] == "significant gain"
    result = {"summary": summarize_runs(runs), "comparisons": list(comparisons.values())}
    table = format_downstream_table(result)
    assert (
        "| mixed | 4 | 4 / 1024 | 3 | 200.00 +- 100.00 | +200.0 [-48.4, +448.4]: no significant "
        "difference |" in table
    )
    assert (
        "| mixed | 8 | 8 / 2048 | 3 | 11.00 +- 1.00 | +11.0 [+8.5, +13.5]: significant gain |"
        in table
    )
    assert "| real | 4 | 4 / 1024 | 3 | 0.00 +- 0.00 | - |" in table
    # The report shows the same table, and older results still render, with a note.
    eval_dir = tmp_path / "eval"
    write_downstream({**result, "data": {"n_test_tiles": 18}, "notes": []}, eval_dir)
    page = build_report([eval_dir], tmp_path / "r.html").read_text()
    assert "<th>labels touched (tiles / px)</th>" in page and "<td>8 / 2048</td>" in page
    assert "no significant difference" in page and "Older format" not in page
    old = {"summary": [{"condition": "real", "budget": 4, "n_seeds": 1, "n_real": 4,
                        "n_synthetic": 0, "test_miou_mean": 0.5, "test_miou_std": None,
                        "val_miou_mean": 0.4}], "data": {}, "notes": []}  # fmt: skip
    (eval_dir / "downstream.json").write_text(json.dumps(old))
    page = build_report([eval_dir], tmp_path / "old.html").read_text()
    assert "Older format (before label budgets)" in page
    assert "<td>real</td><td>4</td><td>0</td><td>1</td><td>50.000</td>" in page
    assert "Older format" in format_downstream_table(old)


def test_cli_budget_flags(data, tmp_path):
    real, sets = data
    runner = CliRunner()
    args = ["eval", "downstream", str(real), str(sets[(4, 0)]), str(sets[(4, 1)])]
    result = runner.invoke(
        app,
        [*args, "--out", str(tmp_path), "--budgets", "8,all", "--label-tile", "32", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output)
    assert settings["budgets"] == [8, "all"] and settings["seeds"] == [0, 1, 2, 3, 4]
    assert settings["label_tile"] == 32 and settings["label_split"] == "train"
    assert "val_split" not in settings
    bad = runner.invoke(app, [*args, "--out", str(tmp_path), "--budgets", "8,most"])
    assert isinstance(bad.exception, PairforgeError)
    assert "'most' is neither a tile count nor 'all'" in str(bad.exception)
    gone = runner.invoke(app, [*args, "--out", str(tmp_path), "--val-split", "val"])
    assert gone.exit_code != 0 and "--val-split" in gone.output


def test_report_finds_the_real_data_and_every_synthetic_set(data, tmp_path):
    from pairforge.eval.report_inputs import collect_results

    real, sets = data
    runs = _hand_runs({"4": [0.1, 0.2, 0.3]})
    result = {"summary": summarize_runs(runs), "comparisons": compare_conditions(runs),
              "data": {"real": str(real), "synthetic": [str(sets[(4, 0)]), str(sets[(4, 1)])]},
              "notes": []}  # fmt: skip
    write_downstream(result, tmp_path / "eval")
    found = collect_results([tmp_path / "eval"])
    assert [p for p, _ in found.downstream] == [tmp_path / "eval"]
    assert sorted(found.datasets) == sorted(p.resolve() for p in (real, sets[(4, 0)], sets[(4, 1)]))
