"""`seg filter` (seg/pair_filter.py): generated pairs kept by their pixel agreement with a head;
the auto threshold reads only the head budget's select-tile labels; the output records both
label sources."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from test_seg_budget import _rewritten
from test_seg_cli import SPEC, _invoke, _tiny_run, _toy_dataset
from typer.testing import CliRunner

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.dataset import DatasetWriter, load_dataset
from pairforge.data.spec import DatasetSpec
from pairforge.errors import PairforgeError
from pairforge.seg.head import SegmentationHead
from pairforge.seg.pair_filter import parse_min_agreement, register
from pairforge.seg.pair_scores import keep_fraction_threshold
from pairforge.seg.sliding import segment_measurement

FIT = ["--num-models", 2, "--epochs", 3, "--timesteps", "50,150"]
BUDGET = ["--labels", 8, "--label-seed", 3]  # 6 fit + 2 select tiles of 32 px
# Pair masks: the head's own labels with the first k pixels flipped (k = None: ignore rows).
FLIPS = {"p0": 0, "p1": 16, "p2": 64, "p3": 128, "p4": 256, "p5": "ignore"}
EXPECTED = {"p0": 1.0, "p1": 240 / 256, "p2": 0.75, "p3": 0.5, "p4": 0.0, "p5": 1 - 16 / 192}


def _filter(*args):
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the command keeps its name
        pass

    register(app)
    result = CliRunner().invoke(app, ["filter", *[str(a) for a in args]])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def _head_labels(head, image):
    """The head's argmax of a 16 x 16 physical image, computed here (one model window)."""
    x = torch.from_numpy(head.normalizer.encode(image).astype(np.float32))[None]
    return head.segment(x).labels[0].numpy()


def _manifest(path, run, budget):
    entry = {"path": str(run), "task": "joint", "sha256": {}, "reads_masks": True,
             "label_budget": budget.to_dict()}  # fmt: skip
    manifest = {"pipeline": "joint", "checkpoints": {"joint": entry}, "samples": []}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _make_set(tmp, head, out, run=None, spec=SPEC):
    """Six 16 x 16 pairs at the head's scale (2 source px per px) with known agreements."""
    data = load_dataset(tmp / "data")
    with DatasetWriter(out, spec.model_copy(update={"name": "toy-gen"})) as writer:
        for index, (sample_id, flips) in enumerate(FLIPS.items()):
            crop = data.read_image(f"m{index % 3}")[:, :32, 32 * index % 128 :][:, :, :32]
            image = F.avg_pool2d(torch.from_numpy(crop), 2).numpy()
            mask = _head_labels(head, image).reshape(-1)
            if flips == "ignore":
                mask[:64] = IGNORE_INDEX  # 4 rows ignored: 192 labeled pixels
                mask[64:80] = 1 - mask[64:80]
            else:
                mask[:flips] = 1 - mask[:flips]
            writer.add(sample_id, image, mask.reshape(16, 16))
    _manifest(out, run or tmp / "run", head.label_budget)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_thread_module):
    tmp = tmp_path_factory.mktemp("filter")
    _tiny_run(tmp / "run")
    _toy_dataset(tmp / "data")
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
             *FIT, *BUDGET])  # fmt: skip
    head = SegmentationHead.load(tmp / "head")
    _make_set(tmp, head, tmp / "set")
    return tmp, head


def _select_min(head, data_dir):
    """The head's worst agreement with a select tile of its budget, computed here."""
    data = load_dataset(data_dir)
    values = []
    for sample_id, y, x in head.label_budget.select_tiles:
        crop = data.read_image(sample_id)[:, y : y + 32, x : x + 32]
        image = F.avg_pool2d(torch.from_numpy(head.normalizer.encode(crop)).float(), 2)
        truth = data.read_mask(sample_id)[y : y + 32 : 2, x : x + 32 : 2]  # 16 px blobs: exact
        values.append(float((head.segment(image[None]).labels[0].numpy() == truth).mean()))
    assert len(values) == 2
    return min(values)


def test_fixed_threshold_keeps_exactly_the_agreeing_pairs(setup):
    tmp, head = setup
    out = tmp / "fixed"
    line = _filter(tmp / "set", "--head", tmp / "head", "--out", out, "--min-agreement", "0.7")
    assert "kept 4 of 6 pairs (0.667)" in line and "threshold 0.7 pixel agreement (fixed" in line
    record = json.loads((out / "filter.json").read_text())
    for sample_id, value in EXPECTED.items():
        assert record["pairs"][sample_id]["agreement"] == pytest.approx(value, abs=1e-12)
        assert record["pairs"][sample_id]["kept"] == (value >= 0.7)
    assert record["pairs"]["p0"]["iou"] == {"binder": 1.0, "grain": 1.0}
    assert record["pairs"]["p4"]["iou"] == {"binder": 0.0, "grain": 0.0}
    assert (record["kept"], record["total"], record["metric"]) == (4, 6, "pixel agreement")
    kept = load_dataset(out)
    assert kept.ids() == ["p0", "p1", "p2", "p5"] and kept.spec.classes == SPEC.classes
    for sample_id in kept.ids():
        for name in (f"images/{sample_id}.tif", f"masks/{sample_id}.png"):
            assert (out / name).read_bytes() == (tmp / "set" / name).read_bytes()
    assert not (out / "images" / "p3.tif").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filter"] == record and manifest["pipeline"] == "joint"
    assert manifest["head"]["label_budget"] == head.label_budget.to_dict()
    assert manifest["head"] == record["head"] and len(manifest["head"]["sha256"]) == 64


def test_auto_threshold_is_the_worst_select_tile_and_reads_only_its_labels(setup):
    tmp, head = setup
    budget = head.label_budget
    expected = _select_min(head, tmp / "data")

    def select_region(sample_id, split):
        if split != budget.split:
            return None
        inside = np.zeros((64, 128), bool)
        for tile_id, y, x in budget.select_tiles:
            if tile_id == sample_id:
                inside[y : y + 32, x : x + 32] = True
        return inside

    _rewritten(tmp / "data", tmp / "outside", select_region)  # every other label swapped
    _rewritten(tmp / "data", tmp / "flip", lambda i, s: ~select_region(i, s) if s == budget.split
               else np.ones((64, 128), bool))  # fmt: skip
    records = {}
    for data in ("data", "outside", "flip"):
        _filter(tmp / "set", "--head", tmp / "head", "--data", tmp / data, "--out",
                tmp / f"auto-{data}")  # fmt: skip
        records[data] = json.loads((tmp / f"auto-{data}" / "filter.json").read_text())
    auto = records["data"]
    assert auto["threshold"] == pytest.approx(expected, abs=1e-12)
    assert "select tiles" in auto["method"] and len(auto["threshold_details"]["select_tiles"]) == 2
    for sample_id, value in EXPECTED.items():
        assert auto["pairs"][sample_id]["kept"] == (value >= expected)
    assert records["outside"]["threshold"] == auto["threshold"]
    assert records["outside"]["pairs"] == auto["pairs"]
    assert records["flip"]["threshold"] != auto["threshold"]  # the select labels do count
    assert records["flip"]["threshold"] == pytest.approx(1 - max(
        t["agreement"] for t in auto["threshold_details"]["select_tiles"]), abs=1e-12)  # fmt: skip


def test_output_keeps_both_label_sources_and_distill_accepts_it(setup):
    from pairforge.core.budgets import manifest_label_sources
    from pairforge.data.budget import make_budget, require_covered
    from pairforge.seg.distill import synthetic_source

    tmp, head = setup
    out = tmp / "sources"
    _filter(tmp / "set", "--head", tmp / "head", "--out", out, "--min-agreement", "0.5")
    sources = manifest_label_sources(out)
    assert [s.role for s in sources] == ["joint", "head"]
    assert all(s.budget.to_dict() == head.label_budget.to_dict() for s in sources)
    assert sources[1].path == str((tmp / "head").resolve())
    data = load_dataset(tmp / "data")
    scale = (32, 16, head.normalizer)
    source = synthetic_source(out, data, head.label_budget, scale, 0.5)
    assert source.images.shape == (5, 2, 16, 16) and source.masks.shape == (5, 16, 16)
    smaller = make_budget(data, 4, 3, 32, "train")
    with pytest.raises(PairforgeError, match="head"):
        for s in sources[::-1]:
            require_covered(s.budget, smaller, f"synthetic set {out} ({s.role})")


def test_rerun_reuses_work_and_other_settings_are_refused(setup):
    tmp, _ = setup
    out = tmp / "rerun"
    args = [tmp / "set", "--head", tmp / "head", "--out", out, "--min-agreement", "0.9"]
    first = _filter(*args)
    stamps = {p: p.stat().st_mtime_ns for p in (out / ".filter").rglob("*.json")}
    images = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert _filter(*args) == first and "kept 3 of 6" in first
    assert {p: p.stat().st_mtime_ns for p in (out / ".filter").rglob("*.json")} == stamps
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == images
    with pytest.raises(PairforgeError, match="min_agreement=0.9.*now 0.5.*another --out"):
        _filter(*args[:-1], "0.5")
    (tmp / "other").mkdir()
    (tmp / "other" / "x.txt").write_text("x")
    with pytest.raises(PairforgeError, match="not a `seg filter` output"):
        _filter(*args[:4], tmp / "other", *args[5:])


def test_scale_two_generator_is_downsampled_to_the_head(setup):
    tmp, head = setup
    fine = tmp / "fine-run" / "model"
    fine.mkdir(parents=True)
    fine.joinpath("pairforge.json").write_text(json.dumps({"crop_size": 32, "resolution": 32}))
    data = load_dataset(tmp / "data")
    with DatasetWriter(tmp / "fine", SPEC.model_copy(update={"name": "toy-gen"})) as writer:
        for index in range(2):
            sample_id = f"m{index}"
            writer.add(sample_id, data.read_image(sample_id)[:, :32, 32:64],
                       data.read_mask(sample_id)[:32, 32:64])  # fmt: skip
    _manifest(tmp / "fine", tmp / "fine-run", head.label_budget)
    _filter(tmp / "fine", "--head", tmp / "head", "--out", tmp / "fine-out", "--min-agreement", 0)
    record = json.loads((tmp / "fine-out" / "filter.json").read_text())
    assert record["scale_factor"] == 2
    for index in range(2):
        sample_id = f"m{index}"
        labels = segment_measurement(head, data.read_image(sample_id)[:, :32, 32:64]).mask
        truth = data.read_mask(sample_id)[:32, 32:64]
        expected = float((labels.numpy() == truth).mean())
        assert record["pairs"][sample_id]["agreement"] == pytest.approx(expected, abs=1e-12)


def test_bad_input(setup):
    tmp, head = setup
    base = [tmp / "set", "--head", tmp / "head", "--out"]
    for text in ("high", "1.5", "nan"):
        with pytest.raises(PairforgeError, match=f"--min-agreement '{text}'.*'auto'"):
            _filter(*base, tmp / "bad", "--min-agreement", text)
    with pytest.raises(PairforgeError, match="--keep-fraction 0.0"):
        _filter(*base, tmp / "bad", "--keep-fraction", 0)
    with pytest.raises(PairforgeError, match="--min-agreement auto needs --data"):
        _filter(*base, tmp / "bad")
    shutil.copytree(tmp / "set", tmp / "no-manifest")
    (tmp / "no-manifest" / "manifest.json").unlink()
    with pytest.raises(PairforgeError, match="manifest.json: not found.*pairforge generate"):
        _filter(tmp / "no-manifest", *base[1:], tmp / "bad", "--min-agreement", 0.5)
    three = DatasetSpec(name="toy", channels=SPEC.channels,
                        classes=[*SPEC.classes, {"id": 9, "name": "pore"}])  # fmt: skip
    _make_set(tmp, head, tmp / "three", spec=three)
    with pytest.raises(PairforgeError, match=r"\['binder', 'grain', 'pore'\] but the head "
                       "predicts 2 classes"):  # fmt: skip
        _filter(tmp / "three", *base[1:], tmp / "bad", "--min-agreement", 0.5)
    coarse = tmp / "coarse-run" / "model"
    coarse.mkdir(parents=True)
    coarse.joinpath("pairforge.json").write_text(json.dumps({"crop_size": 64, "resolution": 16}))
    _make_set(tmp, head, tmp / "coarse", run=tmp / "coarse-run")
    with pytest.raises(PairforgeError, match="4 source px per px but the head.*sees 2"):
        _filter(tmp / "coarse", *base[1:], tmp / "bad", "--min-agreement", 0.5)
    assert not (tmp / "bad").exists()


def test_keep_fraction_threshold():
    assert keep_fraction_threshold([0.9, 0.5, None, 0.7, 0.7], 0.5) == 0.7
    assert keep_fraction_threshold([0.9, 0.5], 0.01) == 0.9  # at least one pair
    assert keep_fraction_threshold([0.9, 0.5], 1.0) == 0.5
    assert parse_min_agreement(" AUTO ") == "auto" and parse_min_agreement("0.25") == 0.25
    with pytest.raises(PairforgeError, match="no pair has a labeled mask pixel"):
        keep_fraction_threshold([None], 0.5)


def test_interrupted_run_scores_only_the_missing_pair(setup):
    tmp, _ = setup
    out = tmp / "resume"
    args = [tmp / "set", "--head", tmp / "head", "--out", out, "--min-agreement", "0.7"]
    _filter(*args)
    before = (out / "filter.json").read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".filter" / "pairs").iterdir()}
    for name in ("manifest.json", "filter.json", ".filter/pairs/p2.json", "images/p1.tif"):
        (out / name).unlink()
    assert "kept 4 of 6" in _filter(*args)
    after = {p.name: p.stat().st_mtime_ns for p in (out / ".filter" / "pairs").iterdir()}
    assert [n for n in stamps if after[n] != stamps[n]] == ["p2.json"]
    assert (out / "filter.json").read_bytes() == before
    assert (out / "images" / "p1.tif").read_bytes() == (
        tmp / "set" / "images" / "p1.tif"
    ).read_bytes()


def test_no_select_tiles_keeps_the_best_fraction(setup):
    tmp, _ = setup
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head3",
             *FIT, "--labels", 3, "--label-seed", 3])  # fmt: skip
    out = tmp / "best"
    line = _filter(tmp / "set", "--head", tmp / "head3", "--data", tmp / "data", "--out", out,
                   "--keep-fraction", 0.5)  # fmt: skip
    assert "kept 3 of 6" in line and "no labeled select tiles" in line
    record = json.loads((out / "filter.json").read_text())
    agreements = sorted((p["agreement"] for p in record["pairs"].values()), reverse=True)
    assert record["threshold"] == agreements[2]
    assert record["threshold_details"]["keep_fraction"] == 0.5


def test_autolabel_head_of_another_budget_is_refused(setup):
    tmp, head = setup
    shutil.copytree(tmp / "set", tmp / "auto-set")
    manifest = json.loads((tmp / "auto-set" / "manifest.json").read_text())
    other = {**head.label_budget.to_dict(), "size": 3}
    other["tiles"] = other["tiles"][:3]
    manifest["head"] = {"sha256": "0" * 64, "label_budget": other}
    (tmp / "auto-set" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PairforgeError, match="head with another label budget"):
        _filter(tmp / "auto-set", "--head", tmp / "head", "--out", tmp / "bad2",
                "--min-agreement", 0.5)  # fmt: skip
