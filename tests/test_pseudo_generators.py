"""Generators on pseudo-labels: `seg pseudolabel --filled-out` (a mask at every pixel, true
labels in the fit tiles only), training on a pseudo-labeled set (the head's budget recorded),
and `seg pseudolabel` sharded over processes."""

import json
import threading

import numpy as np
import pytest
import torch
from test_seg_budget import _rewritten
from test_seg_cli import _invoke, _tiny_run, _toy_dataset
from test_seg_pseudolabel import BUDGET, FIT, _region
from test_train_helpers import tiny_config

from pairforge.core.run import load_run
from pairforge.data.dataset import load_dataset
from pairforge.errors import PairforgeError
from pairforge.seg.head import SegmentationHead
from pairforge.seg.pseudolabel import PseudoSettings, pseudolabel
from pairforge.seg.sliding import segment_measurement
from pairforge.train.loop import train

IDS = ("m0", "m1", "m2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_thread_module):
    tmp = tmp_path_factory.mktemp("pseudo-gen")
    _tiny_run(tmp / "run")
    _toy_dataset(tmp / "data")
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
             *FIT, *BUDGET])  # fmt: skip
    _invoke(["seg", "pseudolabel", tmp / "head", "--data", tmp / "data", "--out", tmp / "out",
             "--threshold", "0.02", "--filled-out", tmp / "filled"])  # fmt: skip
    return tmp


def _files(folder, skip=("pseudolabel.json",)):
    """{relative path: bytes} of every file (segmented-<r>.json: per-call bookkeeping)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.startswith("segmented-")
    }


def test_filled_set_is_head_argmax_with_true_labels_in_fit_tiles_only(setup):
    tmp = setup
    head = SegmentationHead.load(tmp / "head")
    budget = head.label_budget
    data, out, filled = (load_dataset(tmp / d) for d in ("data", "out", "filled"))
    assert filled.ids("train") == list(IDS) and filled.spec.classes == data.spec.classes
    assert filled.normalizer.to_dict() == data.normalizer.to_dict()
    for sample_id in IDS:
        image = data.read_image(sample_id)
        argmax = segment_measurement(head, image).mask.numpy()
        fit, select = (_region(budget, sample_id, p) for p in ("fit", "select"))
        mask, truth = filled.read_mask(sample_id), data.read_mask(sample_id)
        assert (mask != 255).all()  # a class at every pixel
        assert np.array_equal(mask[fit], truth[fit])
        assert np.array_equal(mask[~fit], argmax[~fit])  # select tiles: the head's, not truth
        assert np.array_equal(filled.read_image(sample_id), out.read_image(sample_id))
    sample_id = budget.select_tiles[0][0]
    select = _region(budget, sample_id, "select")
    truth = data.read_mask(sample_id)
    # The head is wrong somewhere in the select tile: the filled set shows its label there.
    assert (filled.read_mask(sample_id)[select] != truth[select]).any()
    assert (out.read_mask(sample_id)[select] == 255).all()
    rec_out, rec_filled = (json.loads((tmp / d / "pseudolabel.json").read_text())
                           for d in ("out", "filled"))  # fmt: skip
    assert rec_out.pop("filled") is False and rec_filled.pop("filled") is True
    assert "select tiles" in rec_filled.pop("filled_labels")
    assert rec_filled == rec_out


def test_filled_set_reads_no_label_outside_the_fit_tiles(setup):
    tmp = setup
    budget = SegmentationHead.load(tmp / "head").label_budget
    fit_only = lambda i, split: _region(budget, i, "fit") if split == budget.split else None  # noqa: E731
    _rewritten(tmp / "data", tmp / "outside-fit", fit_only)  # select tiles rewritten too
    for data, name in (("data", "a"), ("outside-fit", "b")):
        _invoke(["seg", "pseudolabel", tmp / "head", "--data", tmp / data, "--out",
                 tmp / f"auto-{name}", "--filled-out", tmp / f"filled-{name}"])  # fmt: skip
    a, b = _files(tmp / "filled-a"), _files(tmp / "filled-b")
    assert len(a) == 2 * 3 + 1 and a == b  # images, masks, dataset.yaml: bit-identical
    # The auto threshold reads the select tile, so the thresholded sets differ: the test can fail.
    assert _files(tmp / "auto-a") != _files(tmp / "auto-b")


def test_resume_needs_both_sets(setup):
    tmp = setup
    (tmp / "filled" / "masks" / "m1.png").unlink()
    before = _files(tmp / "out")
    output = _invoke(["seg", "pseudolabel", tmp / "head", "--data", tmp / "data", "--out",
                      tmp / "out", "--threshold", "0.02", "--filled-out", tmp / "filled"])  # fmt: skip
    assert "m0: done before, skipped" in output and "m1: (64, 128) kept" in output
    assert "(1 this run)" in output and (tmp / "filled" / "masks" / "m1.png").exists()
    assert _files(tmp / "out") == before


def test_joint_run_on_the_filled_set_records_the_head_budget(setup):
    tmp = setup
    budget = SegmentationHead.load(tmp / "head").label_budget
    run_dir = train(tiny_config(tmp / "filled", "task=joint"), tmp / "joint")
    record = json.loads((run_dir / "model" / "pairforge.json").read_text())
    assert record["label_budget"] == budget.to_dict() and record["reads_masks"] is True
    head_sha = json.loads((tmp / "out" / "pseudolabel.json").read_text())["head"]["sha256"]
    assert record["pseudo_labels"] == {"path": str(tmp / "filled"), "head_sha256": head_sha,
                                       "filled": True}  # fmt: skip
    assert load_run(run_dir).label_budget.to_dict() == budget.to_dict()
    # Resumed on the same set: same budget, no error; the record is unchanged.
    train(tiny_config(tmp / "filled", "task=joint"), run_dir)
    # Its generated pairs carry the budget: distill accepts them at the head's budget only.
    _invoke(["sample", run_dir, "--n", 2, "--out", tmp / "syn", "--sampler", "ddim",
             "--steps", 2, "--device", "cpu"])  # fmt: skip
    entry = json.loads((tmp / "syn" / "manifest.json").read_text())["checkpoints"]["joint"]
    assert entry["label_budget"] == budget.to_dict()
    distill = ["seg", "distill", "--data", tmp / "data", "--pseudo", tmp / "out", "--epochs", 1,
               "--synthetic", tmp / "syn", "--weights", "pseudo=0,synthetic=0.5", "--json"]  # fmt: skip
    report = json.loads(_invoke([*distill, *BUDGET, "--out", tmp / "distill"]))
    assert report["sources"][1]["source"] == "synthetic"
    # At 3 tiles (nested inside the 6), with a pseudo set of a 3-tile head: the pairs are refused.
    small = ["--labels", 3, "--label-seed", 3]
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head3",
             *FIT, *small])  # fmt: skip
    _invoke(["seg", "pseudolabel", tmp / "head3", "--data", tmp / "data", "--out", tmp / "out3",
             "--threshold", "1.0"])  # fmt: skip
    distill[distill.index(tmp / "out")] = tmp / "out3"
    with pytest.raises(PairforgeError, match=r"synthetic set .*syn \(joint\) read the budget 6"):
        _invoke([*distill, *small, "--out", tmp / "distill-3"])


def test_pseudo_set_refusals(setup, tmp_path):
    tmp = setup
    with pytest.raises(PairforgeError) as err:
        train(tiny_config(tmp / "filled", "task=joint", "data.labels=4"), tmp_path / "a")
    message = str(err.value)
    assert "data.labels=4" in message and str(tmp / "filled") in message
    assert "carries its head's label budget (6 labeled tiles" in message
    assert "Remove data.labels" in message and not (tmp_path / "a").exists()
    for task in ("joint", "mask"):
        with pytest.raises(PairforgeError, match=r"unlabeled \(ignore\) pixels.*--filled-out DIR"):
            train(tiny_config(tmp / "out", f"task={task}"), tmp_path / task)
    # An image model reads no masks: the thresholded set is fine and records no budget.
    image = load_run(train(tiny_config(tmp / "out", "task=image"), tmp_path / "image"))
    assert image.label_budget is None and "pseudo_labels" not in image.record.model_extra


def _sharded(tmp, out, filled, num):
    """pseudolabel() as `num` processes (threads, one head each) with a shared barrier."""
    barrier, results, errors = threading.Barrier(num), [None] * num, []
    settings = PseudoSettings(threshold="auto", target_accuracy=0.9, soft=True)

    # Heads load here, one after the other: diffusers builds models under a "meta" device mode,
    # and torch's mode stack is shared by threads, so two loads at once can leave every later
    # tensor of the test session on the meta device.
    heads = [SegmentationHead.load(tmp / "head") for _ in range(num)]

    def work(rank):
        head = heads[rank]
        try:
            results[rank] = pseudolabel(
                head, tmp / "data", out, settings, filled_out=filled, echo=lambda s: None,
                process_index=rank, num_processes=num, barrier=barrier.wait,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(num)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    assert torch.empty(1).device.type == "cpu"  # no device mode left behind
    return results


def test_two_shards_equal_one_process(setup):
    tmp = setup
    (one,) = _sharded(tmp, tmp / "one", tmp / "one-filled", 1)
    main, other = _sharded(tmp, tmp / "two", tmp / "two-filled", 2)
    assert other is None and sorted(main["segmented"]) == sorted(one["segmented"]) == list(IDS)
    for a, b in (("one", "two"), ("one-filled", "two-filled")):
        files_a, files_b = _files(tmp / a, skip=()), _files(tmp / b, skip=())
        assert len(files_a) >= 3 * 2 + 2 and files_a == files_b, a
    assert json.loads((tmp / "two" / ".pseudolabel" / "segmented-1.json").read_text()) == ["m1"]
    main.pop("segmented"), one.pop("segmented")
    assert main == one and set(main["measurements"]) == set(IDS)
