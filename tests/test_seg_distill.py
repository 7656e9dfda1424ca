"""`pairforge seg distill`: budget labels + pseudo-labels (+ synthetic pairs), weighted per
source; refuses a pseudo-labeled set whose head read labels outside the budget."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_seg_cli import _invoke, _tiny_run, _toy_dataset

from pairforge.core.supervised import _weighted_loss
from pairforge.errors import PairforgeError
from pairforge.seg.distill import DEFAULT_WEIGHTS, parse_weights

FIT = ["--num-models", 2, "--epochs", 3, "--timesteps", "50,150"]
BUDGET = ["--labels", 6, "--label-seed", 3]  # 5 fit + 1 select tiles of 32 px
TRAIN = ["--epochs", 2, "--seed", 1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_thread_module):
    tmp = tmp_path_factory.mktemp("distill")
    _tiny_run(tmp / "run")
    _toy_dataset(tmp / "data")
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
             *FIT, *BUDGET])  # fmt: skip
    _invoke(["seg", "pseudolabel", tmp / "head", "--data", tmp / "data", "--out", tmp / "pseudo",
             "--threshold", "1.0"])  # fmt: skip
    return tmp


def _distill(tmp, out, *extra):
    args = ["seg", "distill", "--data", tmp / "data", "--pseudo", tmp / "pseudo", *BUDGET,
            *TRAIN, "--json", "--out", out, *extra]  # fmt: skip
    return json.loads(_invoke(args))


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_pseudo_weight_zero_is_the_baseline_and_pseudo_changes_the_model(setup):
    tmp = setup
    alone = _distill(tmp, tmp / "alone", "--weights", "real=1,pseudo=0")
    baseline = json.loads(_invoke(["seg", "baseline", "--run", tmp / "run", "--data", tmp / "data",
                                   *BUDGET, *TRAIN, "--json", "--out", tmp / "base"]))  # fmt: skip
    a, b = _weights(tmp / "alone"), _weights(tmp / "base")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert alone["mean_iou"] == baseline["mean_iou"]
    assert alone["labels"] == baseline["labels"] and alone["labels"]["tiles"] == 6
    assert [s["source"] for s in alone["sources"]] == ["real"]
    assert alone["sources"][0] == {"source": "real", "weight": 1.0, "tiles": 5,
                                   "labels": "the budget's fit tiles"}  # fmt: skip

    mixed = _distill(tmp, tmp / "mixed", "--weights", "real=2,pseudo=0.5", "--pseudo-crops", 12)
    assert [s["source"] for s in mixed["sources"]] == ["real", "pseudo"]
    pseudo = mixed["sources"][1]
    assert pseudo["weight"] == 0.5 and pseudo["crops"] == 12 and pseudo["drawn"] == 12
    assert pseudo["head_labels"]["fingerprint"] == alone["labels"]["fingerprint"]
    assert mixed["selection"] == "best epoch on the budget's select tiles"
    m = _weights(tmp / "mixed")
    assert not all(torch.equal(m[k], a[k]) for k in a)
    saved = json.loads((tmp / "mixed" / "supervised.json").read_text())
    assert saved["sources"] == mixed["sources"] and saved["label_budget"]["seed"] == 3


def test_refuses_a_pseudo_set_outside_the_budget(setup):
    tmp = setup
    args = ["seg", "distill", "--data", tmp / "data", "--pseudo", tmp / "pseudo",
            "--labels", 6, "--label-seed", 4, *TRAIN]  # fmt: skip
    with pytest.raises(PairforgeError) as err:
        _invoke(args)
    message = str(err.value)
    assert f"pseudo-label set {tmp / 'pseudo'} (its head)" in message
    assert "seed 3" in message and "seed 4" in message and "outside" in message
    # A larger budget of the same seed covers the head's 6 tiles: accepted.
    report = _distill(tmp, tmp / "larger", "--labels", 10, "--label-seed", 3,
                      "--weights", "pseudo=0")  # fmt: skip
    assert report["labels"]["tiles"] == 10


def test_weighted_loss_and_weights_flag():
    logits = torch.randn(2, 3, 4, 4)
    masks = torch.randint(0, 3, (2, 4, 4))
    masks[1, 0] = 255
    only_first = _weighted_loss(logits, masks, torch.tensor([1.0, 0.0]))
    assert only_first == pytest.approx(F.cross_entropy(logits[:1], masks[:1]).item(), rel=1e-6)
    equal = _weighted_loss(logits, masks, torch.tensor([3.0, 3.0]))
    assert equal == pytest.approx(_weighted_loss(logits, masks, None).item(), rel=1e-6)
    assert parse_weights("pseudo=0.25") == {**DEFAULT_WEIGHTS, "pseudo": 0.25}
    for bad in ("fake=1", "real=-1", "real=x"):
        with pytest.raises(PairforgeError, match=f"--weights '{bad}'"):
            parse_weights(bad)


def _synthetic_set(path, budget):
    """Four 16 px pairs (model scale) whose manifest says a joint run on `budget` made them."""
    import numpy as np
    from test_seg_cli import SPEC

    from pairforge.data.dataset import DatasetWriter

    rng = np.random.default_rng(5)
    with DatasetWriter(path, SPEC) as writer:
        for index in range(4):
            mask = (rng.random((16, 16)) > 0.5).astype(np.int64)
            image = np.stack([0.5 + 0.3 * mask, 5.0 * mask - 2.5]).astype(np.float32)
            writer.add(f"gen{index:06d}", image, mask)
    entry = {"path": "runs/joint", "task": "joint", "reads_masks": True,
             "label_budget": budget.to_dict()}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps({"checkpoints": {"joint": entry}}))


def test_synthetic_pairs_checked_against_the_budget(setup):
    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset

    tmp = setup
    data = load_dataset(tmp / "data")
    _synthetic_set(tmp / "syn", make_budget(data, 6, 3, 32))
    report = _distill(tmp, tmp / "with-syn", "--synthetic", tmp / "syn",
                      "--weights", "pseudo=0,synthetic=0.5")  # fmt: skip
    syn = report["sources"][1]
    assert syn["source"] == "synthetic" and syn["tiles"] == 4 and syn["weight"] == 0.5
    assert "joint runs/joint read the budget 6 labeled tiles" in syn["label_sources"][0]
    _synthetic_set(tmp / "syn-other", make_budget(data, 6, 9, 32))
    with pytest.raises(
        PairforgeError, match=r"synthetic set .*syn-other \(joint\) read the budget"
    ):
        _distill(tmp, tmp / "bad", "--synthetic", tmp / "syn-other")


def test_a_filtered_set_that_kept_no_pair_adds_nothing_and_says_so(setup):
    import shutil

    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset

    tmp = setup
    _synthetic_set(tmp / "syn-none", make_budget(load_dataset(tmp / "data"), 6, 3, 32))
    for folder in ("images", "masks"):
        shutil.rmtree(tmp / "syn-none" / folder)
    (tmp / "syn-none" / "filter.json").write_text(json.dumps({"kept": 0, "total": 4}))
    report = _distill(tmp, tmp / "with-none", "--synthetic", tmp / "syn-none",
                      "--weights", "pseudo=0,synthetic=0.5")  # fmt: skip
    syn = report["sources"][1]
    assert syn["tiles"] == 0 and syn["note"] == "seg filter kept none of its pairs"
    assert any("kept none" in w for w in report["warnings"])
    plain = _distill(tmp, tmp / "plain", "--weights", "pseudo=0")
    assert report["mean_iou"] == plain["mean_iou"]  # the same training data and seed
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            _weights(tmp / "with-none").values(), _weights(tmp / "plain").values(), strict=True
        )
    )
    # With pseudo-labels too (two sources of weight 1 + an empty one of weight 0.5): the same
    # plain-mean run as without the empty set.
    both = _distill(tmp, tmp / "both-none", "--synthetic", tmp / "syn-none")
    alone = _distill(tmp, tmp / "alone", "--weights", "synthetic=0")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            _weights(tmp / "both-none").values(), _weights(tmp / "alone").values(), strict=True
        )
    )
    assert both["mean_iou"] == alone["mean_iou"]
