"""Label budgets in `pairforge seg`: fit and baseline read only their budget's labels.

The invariance test rewrites every label a budget must not read (test and val masks, train
pixels outside the budget's tiles) and checks that the head and the baseline come out bit for
bit the same; a change inside a fit tile must change the head, so the test can fail.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_seg_bench_features import _tiny_joint_run
from test_seg_cli import SPEC, _invoke, _tiny_run, _toy_dataset

from pairforge.data.budget import make_budget
from pairforge.data.dataset import DatasetWriter, load_dataset
from pairforge.errors import PairforgeError

FIT = ["--num-models", 2, "--epochs", 3, "--timesteps", "50,150"]
BUDGET = 6  # of the 24 train tiles of 32 px: 5 fit + 1 select (the 4th drawn)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    _tiny_run(tmp / "run")
    _toy_dataset(tmp / "data")
    return tmp


def _rewritten(source, out, keep, change=None):
    """A copy of `source` with class ids swapped (0 <-> 1) at every mask pixel except where
    keep(sample id, split) (a bool (H, W) array, or None: keep nothing) is True; `change`
    (sample id, y, x) additionally swaps the 2 x 2 source block there (one model pixel)."""
    dataset = load_dataset(source)
    with DatasetWriter(out, SPEC) as writer:
        for split, ids in dataset.spec.splits.items():
            for sample_id in ids:
                image, mask = dataset.read_image(sample_id), dataset.read_mask(sample_id)
                kept = keep(sample_id, split)
                swapped = np.where(kept, mask, 1 - mask) if kept is not None else 1 - mask
                if change is not None and change[0] == sample_id:
                    _, y, x = change
                    swapped[y : y + 2, x : x + 2] = 1 - swapped[y : y + 2, x : x + 2]
                writer.add(sample_id, image, swapped, split=split)


def _inside(budget):
    """keep(sample id, split): True inside the budget's tiles of the label split."""

    def keep(sample_id, split):
        if split != budget.split:
            return None
        inside = np.zeros((64, 128), bool)
        t = budget.tile_size
        for tile_id, y, x in budget.tiles:
            if tile_id == sample_id:
                inside[y : y + t, x : x + t] = True
        return inside

    return keep


def _fit(tmp, data, out, *extra):
    args = ["seg", "fit", "--run", tmp / "run", "--data", data, "--out", out, *FIT, *extra]
    return _invoke(args)


def _tensors(path):
    return load_file(str(path))


def _same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_labels_outside_the_budget_change_nothing(setup):
    tmp = setup
    budget = make_budget(load_dataset(tmp / "data"), BUDGET, 3, 32, "train")
    assert len(budget.fit_tiles) == 5 and len(budget.select_tiles) == 1
    _rewritten(tmp / "data", tmp / "outside", _inside(budget))
    # The copy really differs: every test / val label and most train labels are swapped.
    a, b = load_dataset(tmp / "data"), load_dataset(tmp / "outside")
    assert (a.read_mask("m4") != b.read_mask("m4")).all()
    assert (a.read_mask("m0") != b.read_mask("m0")).mean() > 0.5
    flags = ["--labels", BUDGET, "--label-seed", 3]
    for data, out in (("data", "head-a"), ("outside", "head-b")):
        _fit(tmp, tmp / data, tmp / out, *flags)
    head_a, head_b = (json.loads((tmp / h / "head.json").read_text()) for h in ("head-a", "head-b"))
    assert head_a == head_b  # budget, train tiles, selection record, best epochs
    assert head_a["label_budget"] == budget.to_dict()
    assert head_a["selection"]["select_tiles"] == [list(t) for t in budget.select_tiles]
    weights_a = _tensors(tmp / "head-a" / "ensemble.safetensors")
    assert _same_tensors(weights_a, _tensors(tmp / "head-b" / "ensemble.safetensors"))

    # Only test scores may differ: the same head scores the original and the swapped test.
    scores = [
        json.loads(_invoke(["seg", "eval", tmp / "head-a", "--data", tmp / d, "--json"]))
        for d in ("data", "outside")
    ]
    assert scores[0]["mean_iou"] != scores[1]["mean_iou"]

    reports = []
    for data in ("data", "outside"):
        args = ["seg", "baseline", "--run", tmp / "run", "--data", tmp / data, *flags,
                "--epochs", 3, "--json", "--out", tmp / f"sup-{data}"]  # fmt: skip
        reports.append(json.loads(_invoke(args)))
    assert reports[0]["best_epoch"] == reports[1]["best_epoch"]
    assert reports[0]["labels"] == reports[1]["labels"] == budget.summary()
    assert reports[0]["selection"] == "best epoch on the budget's select tiles"
    assert _same_tensors(
        _tensors(tmp / "sup-data" / "model.safetensors"),
        _tensors(tmp / "sup-outside" / "model.safetensors"),
    )
    config = json.loads((tmp / "sup-data" / "supervised.json").read_text())
    assert config["label_budget"] == budget.to_dict()

    # One model pixel changed inside a fit tile changes the head: the test can fail.
    _, y, x = budget.fit_tiles[0]
    _rewritten(tmp / "data", tmp / "inside", lambda i, s: np.ones((64, 128), bool),
               change=(budget.fit_tiles[0][0], y, x))  # fmt: skip
    _fit(tmp, tmp / "inside", tmp / "head-c", *flags)
    assert not _same_tensors(weights_a, _tensors(tmp / "head-c" / "ensemble.safetensors"))


def test_budgets_of_one_seed_are_nested_and_recorded(setup):
    tmp = setup
    out2 = _fit(tmp, tmp / "data", tmp / "n2", "--labels", 2, "--label-seed", 1)
    _fit(tmp, tmp / "data", tmp / "n8", "--labels", 8, "--label-seed", 1)
    small, large = (json.loads((tmp / h / "head.json").read_text()) for h in ("n2", "n8"))
    assert len(small["label_budget"]["tiles"]) == 2 and len(large["label_budget"]["tiles"]) == 8
    assert small["label_budget"]["tiles"] == large["label_budget"]["tiles"][:2]
    # Under 4 tiles there is no select tile: the ensemble holds out one of its own 2 fit tiles.
    assert small["train_tiles"] == small["label_budget"]["tiles"]
    assert small["selection"]["early_stopping"].startswith("holdout of the fit tiles")
    assert small["selection"]["holdout_tiles"] in ([0], [1])
    assert "no selection" in out2 and "holdout of its fit tiles" in out2
    # 8 tiles: positions 4 and 8 select, the other 6 fit.
    assert large["train_tiles"] == [large["label_budget"]["tiles"][i] for i in (0, 1, 2, 4, 5, 6)]
    assert large["selection"]["select_tiles"] == [large["label_budget"]["tiles"][i] for i in (3, 7)]


def test_joint_feature_run_must_lie_inside_the_budget(setup):
    tmp = setup
    _tiny_joint_run(tmp / "joint")  # record without a budget: trained on every mask
    with pytest.raises(PairforgeError) as err:
        _fit(tmp, tmp / "data", tmp / "hj", "--labels", 4, "--mask-fill", "zeros",
             "--run", tmp / "joint")  # fmt: skip
    message = str(err.value)
    assert f"feature run {tmp / 'joint'}" in message
    assert "every mask of its training split (no label budget)" in message
    assert "4 labeled tiles of 32 px" in message

    # A joint run trained on exactly the head's budget passes; on a larger one it does not.
    record_path = tmp / "joint" / "model" / "pairforge.json"
    record = json.loads(record_path.read_text())
    dataset = load_dataset(tmp / "data")
    for size, ok in ((4, True), (8, False)):
        budget = make_budget(dataset, size, 0, 32, "train")
        record.update(reads_masks=True, label_budget=budget.to_dict())
        record_path.write_text(json.dumps(record))
        args = ["--labels", 4, "--mask-fill", "zeros", "--run", tmp / "joint"]
        if ok:
            assert "head written to" in _fit(tmp, tmp / "data", tmp / "hj", *args)
        else:
            with pytest.raises(PairforgeError, match=r"\(4 of its tiles outside\)"):
                _fit(tmp, tmp / "data", tmp / "hj", *args)


def test_foreign_model_folder_warns_that_labels_cannot_be_checked(setup):
    from pairforge.seg.commands import fit_head_on_dataset
    from pairforge.seg.data import TileChoice
    from pairforge.seg.features import FeatureConfig
    from pairforge.seg.head import HeadSettings

    tmp = setup
    folder = tmp / "foreign"
    if not folder.exists():
        shutil.copytree(tmp / "run" / "model", folder)
        (folder / "pairforge.json").unlink()
    fitted = fit_head_on_dataset(
        folder, tmp / "data", TileChoice(labels=4, resolution=16, crop_size=32),
        FeatureConfig(timesteps=(50,)), HeadSettings(num_models=1, max_epochs=1),
    )  # fmt: skip
    assert len(fitted.warnings) == 1 and "cannot check which labels" in fitted.warnings[0]
    assert str(folder) in fitted.warnings[0]


def test_bad_label_counts_raise_pairforge_error(setup):
    tmp = setup
    with pytest.raises(PairforgeError, match=r"--labels 100: split 'train' .* has 24 labeled"):
        _fit(tmp, tmp / "data", tmp / "bad", "--labels", 100)
    with pytest.raises(PairforgeError, match=r"--labels 'abc'.*or 'all'"):
        _fit(tmp, tmp / "data", tmp / "bad", "--labels", "abc")
    with pytest.raises(PairforgeError, match=r"--labels 100: split 'train'"):
        _invoke(["seg", "baseline", "--run", tmp / "run", "--data", tmp / "data",
                 "--labels", 100, "--json"])  # fmt: skip
    with pytest.raises(PairforgeError, match=r"no split named 'nope'"):
        _fit(tmp, tmp / "data", tmp / "bad", "--label-split", "nope")


def test_eval_and_baseline_json_state_the_labels_read(setup):
    tmp = setup
    _fit(tmp, tmp / "data", tmp / "h10", "--labels", 10)
    report = json.loads(_invoke(["seg", "eval", tmp / "h10", "--data", tmp / "data", "--json"]))
    labels = report["labels"]
    assert (labels["tiles"], labels["fit_tiles"], labels["select_tiles"]) == (10, 8, 2)
    assert labels["pixels"] == 10 * 32 * 32 and labels["budget"] == "10"
    assert "warnings" not in report
    text = _invoke(["seg", "eval", tmp / "h10", "--data", tmp / "data"])
    assert "labels read: 10 tiles (8 fit + 2 select), 10240 px" in text
    on_train = json.loads(
        _invoke(["seg", "eval", tmp / "h10", "--data", tmp / "data", "--split", "train", "--json"])
    )
    assert "the head's label split" in on_train["warnings"][0]

    # A budget of 3 has no select tile: the baseline keeps its last epoch (fixed schedule).
    baseline = json.loads(_invoke(["seg", "baseline", "--run", tmp / "run", "--data",
                                   tmp / "data", "--labels", 3, "--epochs", 2, "--json"]))  # fmt: skip
    assert baseline["labels"]["tiles"] == 3 and baseline["labels"]["pixels"] == 3 * 32 * 32
    assert baseline["best_epoch"] == 2 and baseline["best_val_miou"] is None
    assert baseline["selection"].startswith("no select tiles")

    # A head saved before budgets (no label_budget in head.json) still loads and evaluates.
    shutil.copytree(tmp / "h10", tmp / "old")
    meta = json.loads((tmp / "old" / "head.json").read_text())
    del meta["label_budget"]
    (tmp / "old" / "head.json").write_text(json.dumps(meta))
    old = json.loads(_invoke(["seg", "eval", tmp / "old", "--data", tmp / "data", "--json"]))
    assert old["mean_iou"] == report["mean_iou"]
    assert old["labels"]["budget"] is None and old["labels"]["tiles"] == 8
    text = _invoke(["seg", "eval", tmp / "old", "--data", tmp / "data"])
    assert "labels read: 8 training tiles; head fitted before label budgets" in text
