"""`pairforge seg pseudolabel`: the head's confident labels, true labels in its fit tiles, no
label outside its budget read, resumable per measurement."""

import json

import numpy as np
import pytest
from test_seg_budget import _inside, _rewritten
from test_seg_cli import _invoke, _tiny_run, _toy_dataset

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.dataset import load_dataset
from pairforge.errors import PairforgeError
from pairforge.seg.head import SegmentationHead
from pairforge.seg.pseudolabel import KEEP_GRID, parse_threshold, pick_threshold
from pairforge.seg.sliding import segment_measurement

FIT = ["--num-models", 2, "--epochs", 3, "--timesteps", "50,150"]
BUDGET = ["--labels", 6, "--label-seed", 3]  # 5 fit + 1 select tiles of 32 px


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_thread_module):
    tmp = tmp_path_factory.mktemp("pseudo")
    _tiny_run(tmp / "run")
    _toy_dataset(tmp / "data")
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
             *FIT, *BUDGET])  # fmt: skip
    return tmp


def _pseudo(tmp, data, out, *extra):
    return _invoke(["seg", "pseudolabel", tmp / "head", "--data", data, "--out", out, *extra])


def _region(budget, sample_id, part, shape=(64, 128)):
    region = np.zeros(shape, bool)
    t = budget.tile_size
    for tile_id, y, x in budget.part(part):
        if tile_id == sample_id:
            region[y : y + t, x : x + t] = True
    return region


def test_confident_head_labels_true_fit_labels_ignored_select_tiles(setup):
    tmp = setup
    head = SegmentationHead.load(tmp / "head")
    budget = head.label_budget
    data = load_dataset(tmp / "data")
    cut = float(np.median(segment_measurement(head, data.read_image("m0")).js.numpy()))
    output = _pseudo(tmp, tmp / "data", tmp / "fixed", "--threshold", repr(cut), "--soft")
    assert "3 measurements written" in output and f"threshold {cut:.4g} (fixed" in output
    pseudo = load_dataset(tmp / "fixed")
    assert pseudo.spec.ignore_index == 255 and pseudo.ids("train") == ["m0", "m1", "m2"]
    assert pseudo.spec.channel_names == data.spec.channel_names
    assert pseudo.normalizer.to_dict() == data.normalizer.to_dict()
    for sample_id in ("m0", "m1", "m2"):
        image = data.read_image(sample_id)
        assert np.array_equal(pseudo.read_image(sample_id), image)  # copied float32
        result = segment_measurement(head, image)
        js = result.js.numpy()
        fit, select = _region(budget, sample_id, "fit"), _region(budget, sample_id, "select")
        outside = ~(fit | select)
        mask, truth = pseudo.read_mask(sample_id), data.read_mask(sample_id)
        confident = outside & (js <= cut)
        if sample_id == "m0":
            assert confident.any() and (outside & ~confident).any()  # both cases are tested
        assert np.array_equal(mask[confident], result.mask.numpy()[confident])
        assert (mask[outside & ~confident] == IGNORE_INDEX).all()
        assert np.array_equal(mask[fit], truth[fit])
        assert (mask[select] == IGNORE_INDEX).all()
        soft = np.load(tmp / "fixed" / "soft" / f"{sample_id}.npy")
        assert soft.dtype == np.float16 and soft.shape == (2, 64, 128)
        assert np.allclose(soft, result.probs.numpy(), atol=1e-3)
    record = json.loads((tmp / "fixed" / "pseudolabel.json").read_text())
    assert record["head"]["label_budget"] == budget.to_dict()
    assert record["labels"] == budget.summary() and len(record["head"]["sha256"]) == 64
    assert "fit tiles the mask is the true label" in record["true_labels"]
    assert set(record["measurements"]) == {"m0", "m1", "m2"}
    m0 = record["measurements"]["m0"]
    assert m0["kept_fraction"] == pytest.approx((pseudo.read_mask("m0") != 255).mean())


def test_auto_threshold_reads_only_budget_labels(setup):
    tmp = setup
    budget = SegmentationHead.load(tmp / "head").label_budget
    _rewritten(tmp / "data", tmp / "outside", _inside(budget))
    for data, out in (("data", "auto-a"), ("outside", "auto-b")):
        _pseudo(tmp, tmp / data, tmp / out, "--target-accuracy", "0.9")
    a, b = tmp / "auto-a", tmp / "auto-b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) >= 3 * 3 + 2
    for name in files:
        if name.name != "pseudolabel.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    rec_a, rec_b = (json.loads((d / "pseudolabel.json").read_text()) for d in (a, b))
    assert rec_a.pop("data") != rec_b.pop("data") and rec_a == rec_b
    chosen = rec_a["threshold"]
    assert chosen["select_pixels"] == 32 * 32  # the one select tile, every pixel labeled
    assert "select tiles" in chosen["method"] and len(chosen["grid"]) == len(KEEP_GRID)
    # A change inside the select tile moves the threshold: the test can fail.
    sample_id, y, x = budget.select_tiles[0]
    _rewritten(tmp / "data", tmp / "flip", lambda i, s: ~_region(budget, i, "select"))
    _pseudo(tmp, tmp / "flip", tmp / "auto-c", "--target-accuracy", "0.9")
    rec_c = json.loads((tmp / "auto-c" / "pseudolabel.json").read_text())
    assert rec_c["threshold"]["grid"] != chosen["grid"]


def test_pick_threshold():
    u = np.arange(100, dtype=float)  # pixels 0..79 right, 80..99 wrong
    correct = np.arange(100) < 80
    picked = pick_threshold(u, correct, 0.95)
    kept = u <= picked["value"]
    assert picked["reached"] and correct[kept].mean() >= 0.95
    assert picked["value"] == pytest.approx(np.quantile(u, 0.8))  # keep 0.85 falls below 0.95
    low = pick_threshold(u, np.zeros(100, bool), 0.95)
    assert not low["reached"] and low["value"] == pytest.approx(np.quantile(u, 0.5))
    assert parse_threshold("auto") == "auto" and parse_threshold("0.2") == 0.2
    with pytest.raises(PairforgeError, match="--threshold 'high'"):
        parse_threshold("high")


def test_resume_redoes_only_the_missing_measurement(setup):
    tmp = setup
    out = tmp / "resume"
    _pseudo(tmp, tmp / "data", out, "--threshold", "0.02")
    # segmented-<r>.json: which ids each process labeled in the last call (bookkeeping)
    before = {
        p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "segmented-" not in p.name
    }
    (out / ".pseudolabel" / "records" / "m1.json").unlink()
    output = _pseudo(tmp, tmp / "data", out, "--threshold", "0.02")
    assert "(1 this run)" in output
    assert "m0: done before, skipped" in output and "m2: done before, skipped" in output
    assert "m1: (64, 128) kept" in output
    after = {
        p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "segmented-" not in p.name
    }
    assert json.loads((out / ".pseudolabel" / "segmented-0.json").read_text()) == ["m1"]
    assert after == before
    with pytest.raises(PairforgeError, match="threshold=0.02.*now 0.5"):
        _pseudo(tmp, tmp / "data", out, "--threshold", "0.5")


def test_bad_flags(setup):
    tmp = setup
    with pytest.raises(PairforgeError, match="--target-accuracy 1.5"):
        _pseudo(tmp, tmp / "data", tmp / "bad", "--target-accuracy", "1.5")
    with pytest.raises(PairforgeError, match="no split named 'nope'"):
        _pseudo(tmp, tmp / "data", tmp / "bad", "--split", "nope")


def test_no_select_tiles_keeps_a_fixed_fraction_per_measurement(setup):
    tmp = setup
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head3",
             *FIT, "--labels", 3, "--label-seed", 3])  # fmt: skip
    out = tmp / "keep"
    output = _invoke(["seg", "pseudolabel", tmp / "head3", "--data", tmp / "data", "--out", out,
                      "--keep-fraction", "0.7"])  # fmt: skip
    assert "threshold per measurement (no labeled select tiles" in output
    record = json.loads((out / "pseudolabel.json").read_text())
    assert record["threshold"]["value"] is None and record["threshold"]["keep_fraction"] == 0.7
    head = SegmentationHead.load(tmp / "head3")
    data = load_dataset(tmp / "data")
    for sample_id in ("m0", "m1", "m2"):
        js = segment_measurement(head, data.read_image(sample_id)).js.numpy()
        measured = record["measurements"][sample_id]
        assert measured["threshold"] == pytest.approx(float(np.quantile(js, 0.7)), rel=1e-6)
        assert measured["held_out_pixels"] == 0
