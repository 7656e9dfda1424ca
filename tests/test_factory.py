"""`pairforge factory --quick`: the whole semi-supervised chain on tiny data, every step inside
the budget, resumed without redoing finished steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.factory import RESULT_METHODS, FactoryPlan, all_stages

pytestmark = pytest.mark.slow


def _invoke(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def chain(tmp_path_factory, single_thread_module):
    out = tmp_path_factory.mktemp("factory") / "out"
    _invoke(["factory", "--quick", "--out", str(out)])
    return out


WORK = (".tif", ".png", ".npy", ".safetensors", ".pt")  # what a step computes


def _snapshot(out: Path) -> dict[str, tuple[int, str]]:
    """Every file of the chain's outputs (not the final comparison, report and run record) ->
    (mtime ns, sha256). manifest.json files hold the last session's counts: content not kept."""
    import hashlib

    skip = ("eval/factory", "report.html", "factory_run.json")
    session = ("segmented-", "timing-")  # what one call did (pseudolabel, generate)
    found = {}
    for path in sorted(out.rglob("*")):
        name = str(path.relative_to(out))
        if path.is_file() and not name.startswith(skip) and not path.name.startswith(session):
            digest = (
                ""
                if path.name == "manifest.json"
                else hashlib.sha256(path.read_bytes()).hexdigest()
            )
            found[name] = (path.stat().st_mtime_ns, digest)
    return found


def _changed(before: dict, after: dict) -> set[str]:
    """Files whose content changed, or computed files (WORK, results) that were rewritten."""
    return {k for k, (mtime, digest) in after.items() if k not in before
            or digest != before[k][1]
            or (k.endswith(WORK) or "eval/results" in k) and mtime != before[k][0]}  # fmt: skip


def test_dry_run_lists_every_step_once(tmp_path):
    result = _invoke(["factory", "--dry-run", "--out", str(tmp_path), "--labels", "8,all",
                      "--seeds", "0,1"])  # fmt: skip
    lines = result.output.strip().splitlines()
    assert sum(" seg fit " in line for line in lines) == 4
    assert sum(" seg filter " in line for line in lines) == 4
    assert lines[-2].startswith("pairforge eval factory") and lines[-1].startswith(
        "pairforge report"
    )
    # The cheaper steps of every (budget, seed) come before the first generator is trained.
    first_train = next(i for i, line in enumerate(lines) if "demo-joint" in line)
    assert max(i for i, line in enumerate(lines) if " seg pseudolabel " in line) < first_train
    # Every step takes the factory's own settings.
    result = _invoke(["factory", "--dry-run", "--out", str(tmp_path), "--pseudo-crops", "1024",
                      "--distill-epochs", "5", "--image-minutes", "8", "--generator-minutes", "3",
                      "--generator", "two-stage", "--seeds", "0"])  # fmt: skip
    lines = result.output.strip().splitlines()
    distills = [line for line in lines if " seg distill " in line]
    assert len(distills) == 2
    assert all("--epochs 5" in line and "--pseudo-crops 1024" in line for line in distills)
    assert "optim.max_minutes=8" in next(line for line in lines if "demo-image" in line)
    assert sum("optim.max_minutes=3" in line for line in lines) == 2  # mask + SDM
    assert any("--pipeline two-stage" in line for line in lines)
    assert all("--overlap 0" in line for line in lines if " seg pseudolabel " in line)
    bad = CliRunner().invoke(app, ["factory", "--dry-run", "--generator", "gan"])
    assert bad.exit_code != 0 and "--generator 'gan'" in str(bad.exception)


def test_every_step_reads_only_the_budget(tmp_path):
    """The stages of (8, seed 1): labels, seeds and the runs they read."""
    stages = {s.name: s.args for s in all_stages(FactoryPlan(seeds=[1]), tmp_path, None, None)}
    for name in ("head b8-s1", "baseline b8-s1", "distill b8-s1", "distill + synthetic b8-s1"):
        args = stages[name]
        assert args[args.index("--labels") + 1] == "8"
        assert args[args.index("--label-seed") + 1] == "1"
    train = stages["train joint-b8-s1"]
    assert f"data.path={tmp_path / 'pseudo' / 'b8-s1-filled'}" in train
    assert not any("data.labels" in a for a in train)  # the pseudo set carries its budget
    assert not any("data.labels" in a for a in stages["train image"])


def test_chain_runs_and_compares(chain):
    for method in RESULT_METHODS:
        result = json.loads((chain / "eval" / "results" / method / "b4-s0.json").read_text())
        assert 0.0 <= result["mean_iou"] <= 1.0 and result["labels"]["tiles"] == 4
    fingerprints = {
        json.loads((chain / "eval" / "results" / m / "b4-s0.json").read_text())["labels"][
            "fingerprint"
        ]
        for m in RESULT_METHODS
    }
    assert len(fingerprints) == 1
    comparison = json.loads((chain / "eval" / "factory" / "factory.json").read_text())
    (row,) = comparison["rows"]
    assert row["budget"] == "4" and row["seeds"] == [0]
    assert set(row["per_class"]) == set(comparison["classes"])
    assert row["chain"]["0"]["pseudo_kept_fraction"] is not None
    assert row["chain"]["0"]["filter_kept_fraction"] is not None
    report = (chain / "report.html").read_text()
    assert "The factory" in report and "factory_run.json" not in report.split("Wall time")[0]


def test_the_chain_records_one_budget(chain):
    """Head, pseudo-labels, the generator run, the filtered set and every result read the same
    budget (each command checks its inputs; here the records agree)."""
    head = json.loads((chain / "seg" / "head-b4-s0" / "head.json").read_text())["label_budget"]
    pseudo = json.loads((chain / "pseudo" / "b4-s0" / "pseudolabel.json").read_text())
    assert pseudo["head"]["label_budget"] == head
    run = json.loads((chain / "runs" / "joint-b4-s0" / "model" / "pairforge.json").read_text())
    assert run["label_budget"] == head and run["pseudo_labels"]["filled"] is True
    from pairforge.core.budgets import manifest_label_sources

    sources = manifest_label_sources(chain / "synthetic" / "b4-s0-filtered")
    assert sources and all(s.budget is not None and s.budget.to_dict() == head for s in sources)


def _relabel_outside(source: Path, out: Path, budget) -> None:
    """A copy of `source` whose masks have every class id rotated outside the budget's tiles
    of its label split (the val split everywhere); the test split is kept as it is."""
    import numpy as np

    from pairforge.data.dataset import DatasetWriter, load_dataset

    dataset = load_dataset(source)
    k, t = dataset.num_classes, budget.tile_size
    with DatasetWriter(out, dataset.spec) as writer:
        for split, ids in dataset.spec.splits.items():
            for sample_id in ids:
                image, mask = dataset.read_image(sample_id), dataset.read_mask(sample_id)
                keep = np.zeros(mask.shape, bool)
                if split == "test":
                    keep[:] = True
                for tile_id, y, x in budget.tiles if split == budget.split else ():
                    if tile_id == sample_id:
                        keep[y : y + t, x : x + t] = True
                writer.add(sample_id, image, np.where(keep, mask, (mask + 1) % k), split=split)


def test_no_step_reads_a_label_outside_the_budget(chain, tmp_path):
    """The whole chain on a copy whose labels outside the budget (train split) and in the val
    split are all wrong gives the same segmenters, bit for bit."""
    from safetensors.torch import load_file

    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset

    budget = make_budget(load_dataset(chain / "data"), 4, 0, 32)
    _relabel_outside(chain / "data", tmp_path / "data", budget)
    changed = load_dataset(tmp_path / "data")
    first = changed.ids("train")[0]
    assert (changed.read_mask(first) != load_dataset(chain / "data").read_mask(first)).any()
    _invoke(["factory", "--quick", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b")])
    for method in RESULT_METHODS:
        a, b = (json.loads((root / "eval" / "results" / method / "b4-s0.json").read_text())
                for root in (chain, tmp_path / "b"))  # fmt: skip
        assert (a["mean_iou"], a["per_class_iou"]) == (b["mean_iou"], b["per_class_iou"]), method
    for model in ("distill-b4-s0", "distill-synthetic-b4-s0", "baseline-b4-s0"):
        a, b = (load_file(str(root / "seg" / model / "model.safetensors"))
                for root in (chain, tmp_path / "b"))  # fmt: skip
        assert all(bool((a[key] == b[key]).all()) for key in a), model


def test_rerun_redoes_nothing_and_resumes_a_lost_step(chain):
    before = _snapshot(chain)
    _invoke(["factory", "--quick", "--out", str(chain)])
    assert _changed(before, _snapshot(chain)) == set()  # nothing recomputed
    record = json.loads((chain / "factory_run.json").read_text())
    # Stage times of the first call survive the rerun that skipped those stages.
    assert len(record["invocations"]) >= 2 and record["seconds"]["head b4-s0"] > 0
    assert record["total_seconds"] == pytest.approx(
        sum(c["total_seconds"] for c in record["invocations"]), abs=0.2
    )
    # An interrupted chain: the filter step and the last distillation never finished.
    shutil.rmtree(chain / "synthetic" / "b4-s0-filtered")
    (chain / "eval" / "results" / "distill-synthetic" / "b4-s0.json").unlink()
    _invoke(["factory", "--quick", "--out", str(chain)])
    redone = _changed(before, _snapshot(chain))
    lost = ("synthetic/b4-s0-filtered", "seg/distill-synthetic", "eval/results/distill-synthetic")
    assert redone and all(k.startswith(lost) for k in redone), sorted(redone)
    assert (chain / "eval" / "results" / "distill-synthetic" / "b4-s0.json").exists()


def test_a_step_whose_command_changed_is_redone(chain):
    """A result written by other settings is stale: the chain reruns that step (and keeps the
    ones whose command is the same)."""
    before = _snapshot(chain)
    result = _invoke(["factory", "--quick", "--out", str(chain), "--distill-epochs", "2"])
    assert "was written by another command: rerunning" in result.output
    redone = _changed(before, _snapshot(chain))
    assert "eval/results/distill/b4-s0.json" in redone
    assert "eval/results/distill-synthetic/b4-s0.json" in redone
    assert not any(k.startswith(("seg/head-", "eval/results/head", "eval/results/baseline",
                                 "pseudo/", "runs/")) for k in redone), sorted(redone)  # fmt: skip
    command = json.loads((chain / "eval/results/distill/.b4-s0.json.command.json").read_text())
    assert command["args"][command["args"].index("--epochs") + 1] == "2"
