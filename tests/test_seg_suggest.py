"""`seg suggest` / `seg import-labels` (seg/suggest.py, seg/suggest_io.py): tiles to label next by
ensemble disagreement and feature diversity, reading no mask; export -> label -> import round
trip; `budget_from_tiles`."""

import csv
import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
import typer
from bench_modules import load_bench
from PIL import Image
from test_seg_cli import _invoke, _tiny_run, _toy_dataset
from typer.testing import CliRunner

from pairforge.data.budget import budget_from_tiles, make_budget
from pairforge.data.dataset import DatasetWriter, load_dataset
from pairforge.errors import PairforgeError
from pairforge.seg.head import SegmentationHead
from pairforge.seg.suggest import greedy_picks, register

FIT = ["--num-models", 2, "--epochs", 3, "--timesteps", "50,150"]
BUDGET = ["--labels", 8, "--label-seed", 3]  # of the 24 train tiles of 32 px
GRID = [(f"m{i}", y, x) for i in range(3) for y in (0, 32) for x in (0, 32, 64, 96)]


def _cli(*args):
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the commands keep their names
        pass

    register(app)
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_thread_module):
    tmp = tmp_path_factory.mktemp("suggest")
    _tiny_run(tmp / "run")
    _toy_dataset(tmp / "data")
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "data", "--out", tmp / "head",
             *FIT, *BUDGET])  # fmt: skip
    return tmp, SegmentationHead.load(tmp / "head")


def _suggest(tmp, data, out, *flags):
    _cli("suggest", tmp / "head", "--data", data, "--out", out, *flags)
    return json.loads((out / "suggest.json").read_text())


def _tile_js(head, data_dir, tile):
    """Mean JS of the head over one 32 px tile, computed here: normalize, 2x2 average, segment."""
    sample_id, y, x = tile
    crop = load_dataset(data_dir).read_image(sample_id)[:, y : y + 32, x : x + 32]
    image = F.avg_pool2d(torch.from_numpy(head.normalizer.encode(crop)).float(), 2)
    return float(head.segment(image[None]).js[0].mean())


def _copy_with_images(tmp, name, image_of):
    """A copy of the toy data (same name and masks) whose images are image_of(id, image)."""
    data = load_dataset(tmp / "data")
    with DatasetWriter(tmp / name, data.spec) as writer:
        for split, ids in data.spec.splits.items():
            for sample_id in ids:
                image, mask = data.read_pair(sample_id)
                writer.add(sample_id, image_of(sample_id, image), mask, split=split)
    return tmp / name


def test_ranking_by_mean_js_reads_no_mask(setup, monkeypatch):
    tmp, head = setup
    budget = head.label_budget
    free = [t for t in GRID if t not in set(budget.tiles)]
    record = _suggest(tmp, tmp / "data", tmp / "s0", "--n", 5, "--diversity", 0)
    by_hand = {t: _tile_js(head, tmp / "data", t) for t in free}
    order = sorted(free, key=lambda t: -by_hand[t])
    picks = [(s["sample_id"], s["y"], s["x"]) for s in record["suggestions"]]
    assert picks == order[:5] and [s["rank"] for s in record["suggestions"]] == [1, 2, 3, 4, 5]
    for s, tile in zip(record["suggestions"], picks):
        assert s["uncertainty"] == pytest.approx(by_hand[tile], rel=1e-4, abs=1e-7)
        assert s["tile_size"] == 32
    assert record["candidates"] == 16 and record["reads_masks"] is False
    assert (
        record["head"]["label_budget"] == budget.to_dict() and len(record["head"]["sha256"]) == 64
    )
    assert record["labels"] == budget.summary() and record["settings"]["diversity"] == 0
    rows = list(csv.DictReader((tmp / "s0" / "suggest.csv").open()))
    assert [(r["sample_id"], int(r["y"]), int(r["x"])) for r in rows] == picks
    sheet = Image.open(tmp / "s0" / "contact_sheet.png")
    assert sheet.size[0] > 400 and sheet.size[1] > 100

    # Masks changed or gone: the same ranking, and no mask is ever read.
    def no_masks(sample_id, image):
        return image

    other = _copy_with_images(tmp, "nomask", no_masks)
    shutil.rmtree(other / "masks")
    (other / "masks").mkdir()
    from pairforge.data.dataset import Dataset

    def refuse(*_args, **_kwargs):
        raise AssertionError("seg suggest read a mask")

    monkeypatch.setattr(Dataset, "read_mask", refuse)
    for flags in (["--diversity", 0], ["--diversity", 0.5]):
        again = _suggest(tmp, other, tmp / f"nomask-{flags[1]}", "--n", 5, *flags)
        first = _suggest(tmp, tmp / "data", tmp / f"mask-{flags[1]}", "--n", 5, *flags)
        assert again["suggestions"] == first["suggestions"]


def test_diversity_skips_duplicate_tiles_and_budget_look_alikes(setup):
    tmp, head = setup
    # Every train measurement the same image: tiles at one (y, x) are duplicates.
    first = load_dataset(tmp / "data").read_image("m0")
    dup = _copy_with_images(tmp, "dup", lambda i, image: first if i in ("m1", "m2") else image)
    budget_positions = {(y, x) for _, y, x in head.label_budget.tiles}
    free_positions = {(y, x) for _, y, x in GRID} - budget_positions
    n = len(free_positions)
    assert n >= 2  # the label seed leaves positions without a budget look-alike
    plain = _suggest(tmp, dup, tmp / "dup0", "--n", n, "--diversity", 0)
    positions = [(s["y"], s["x"]) for s in plain["suggestions"]]
    assert len(set(positions)) < n  # uncertainty alone picks copies of one tile
    diverse = _suggest(tmp, dup, tmp / "dup5", "--n", n, "--diversity", 0.5)
    positions = [(s["y"], s["x"]) for s in diverse["suggestions"]]
    assert set(positions) == free_positions  # each once, none looking like a budget tile
    assert all(s["distance"] > 0 for s in diverse["suggestions"])


def test_budget_tiles_are_never_suggested(setup):
    tmp, head = setup
    record = _suggest(tmp, tmp / "data", tmp / "all", "--n", 16, "--pool-features", "image")
    picks = [(s["sample_id"], s["y"], s["x"]) for s in record["suggestions"]]
    assert sorted(picks) == sorted(set(GRID) - set(head.label_budget.tiles))
    assert record["settings"]["pool_features"] == "image"
    with pytest.raises(PairforgeError, match="--n 17: split 'train' has only 16 unlabeled tiles"):
        _suggest(tmp, tmp / "data", tmp / "more", "--n", 17)


def test_greedy_picks_weights_uncertainty_and_distance():
    features = np.array([[0.0], [0.1], [5.0], [10.0]])
    anchors = np.array([[0.0]])
    u = np.array([1.0, 0.9, 0.1, 0.0])
    assert [p["index"] for p in greedy_picks(u, features, anchors, 4, 0.0)] == [0, 1, 2, 3]
    # Tile 0 equals the budget tile: skipped while others are left; far tiles win with weight 1.
    assert [p["index"] for p in greedy_picks(u, features, anchors, 4, 1.0)] == [3, 2, 1, 0]
    picks = greedy_picks(u, features, anchors, 2, 0.5)
    assert picks[0]["index"] == 3 and picks[0]["score"] == pytest.approx(0.5)  # 0.5*0 + 0.5*1
    # Then 0.5 * 0.9 + 0.5 * 0.01 (tile 1) beats 0.5 * 0.1 + 0.5 * 0.5 (tile 2).
    assert picks[1]["index"] == 1 and picks[1]["distance"] == pytest.approx(0.01)
    assert picks[1]["score"] == pytest.approx(0.455)


def test_export_fill_import_round_trip(setup):
    tmp, head = setup
    shutil.copytree(tmp / "data", tmp / "rt")
    before = {
        i: np.asarray(Image.open(tmp / "rt" / "masks" / f"{i}.png")) for i in ("m0", "m1", "m2")
    }
    record = _suggest(tmp, tmp / "rt", tmp / "rt-s", "--n", 3, "--export", tmp / "label")
    meta = json.loads((tmp / "label" / "tiles.json").read_text())
    assert meta["fill_id"] == 255 and "every pixel must be labeled" in meta["fill_meaning"]
    assert [(t["sample_id"], t["y"], t["x"]) for t in meta["tiles"]] == [
        (s["sample_id"], s["y"], s["x"]) for s in record["suggestions"]]  # fmt: skip
    source = load_dataset(tmp / "rt")
    rng = np.random.default_rng(5)
    painted = {}
    for t in meta["tiles"]:
        image = tifffile.imread(tmp / "label" / t["image"])
        crop = source.read_image(t["sample_id"])[:, t["y"] : t["y"] + 32, t["x"] : t["x"] + 32]
        assert image.shape == (2, 32, 32) and np.array_equal(image, crop)
        template = np.asarray(Image.open(tmp / "label" / t["mask"]))
        assert template.shape == (32, 32) and (template == 255).all()
        painted[t["name"]] = rng.choice([0, 7], size=(32, 32)).astype(np.uint8)
        Image.fromarray(painted[t["name"]]).save(tmp / "label" / t["mask"])
    _cli("import-labels", tmp / "label", "--data", tmp / "rt")
    changed = 0
    for sample_id, old in before.items():
        expected = old.copy()
        for t in meta["tiles"]:
            if t["sample_id"] == sample_id:
                expected[t["y"] : t["y"] + 32, t["x"] : t["x"] + 32] = painted[t["name"]]
        written = np.asarray(Image.open(tmp / "rt" / "masks" / f"{sample_id}.png"))
        assert np.array_equal(written, expected)
        changed += int((written != old).sum())
    assert changed > 1000  # the painted labels differ from the old ones: the test can fail
    budget = json.loads((tmp / "label" / "budget.json").read_text())
    tiles = [tuple(t) for t in budget["tiles"]]
    assert tiles[:8] == list(head.label_budget.tiles) and len(tiles) == 11
    assert tiles[8:] == [(t["sample_id"], t["y"], t["x"]) for t in meta["tiles"]]
    assert budget["select_every"] == 4 and budget["seed"] == 3
    # The next head fits on exactly that budget file: --labels DIR/budget.json.
    _invoke(["seg", "fit", "--run", tmp / "run", "--data", tmp / "rt", "--out", tmp / "head2",
             *FIT, "--labels", tmp / "label" / "budget.json"])  # fmt: skip
    assert SegmentationHead.load(tmp / "head2").label_budget.to_dict() == budget


def test_budget_file_errors(setup):
    from pairforge.data.budget import load_budget_file, parse_labels_choice

    tmp, head = setup
    ds = load_dataset(tmp / "data")
    assert parse_labels_choice("8") == 8 and parse_labels_choice("all") is None
    assert parse_labels_choice(" b.JSON") == __import__("pathlib").Path("b.JSON")
    # A head's head.json carries its budget: it is read as that budget.
    assert load_budget_file(tmp / "head" / "head.json", ds) == head.label_budget
    with pytest.raises(PairforgeError, match="nope.json: no such label budget file"):
        load_budget_file(tmp / "nope.json", ds)
    bad = tmp / "bad-budget.json"
    bad.write_text("{not json")
    with pytest.raises(PairforgeError, match="bad-budget.json: not readable JSON"):
        load_budget_file(bad, ds)
    record = head.label_budget.to_dict()
    bad.write_text(json.dumps({**record, "dataset": "other"}))
    with pytest.raises(PairforgeError, match="dataset 'other', but the data is 'toy'"):
        load_budget_file(bad, ds)
    bad.write_text(json.dumps(record))
    with pytest.raises(PairforgeError, match="split 'train', not 'val'; pass --label-split train"):
        load_budget_file(bad, ds, split="val")
    with pytest.raises(PairforgeError, match="are 32 px, not 64 px; leave --label-tile out"):
        load_budget_file(bad, ds, tile_size=64)
    bad.write_text(json.dumps({**record, "tiles": [["m0", 16, 0]]}))
    with pytest.raises(PairforgeError, match=r"\('m0', y 16, x 0\) is not a 32 px grid tile"):
        load_budget_file(bad, ds)


def test_import_refuses_bad_labels_and_writes_nothing(setup):
    tmp, _ = setup
    shutil.copytree(tmp / "data", tmp / "bad")
    _suggest(tmp, tmp / "bad", tmp / "bad-s", "--n", 2, "--export", tmp / "badlabel")
    masks = {p.name: p.read_bytes() for p in (tmp / "bad" / "masks").iterdir()}
    meta = json.loads((tmp / "badlabel" / "tiles.json").read_text())
    first, second = (tmp / "badlabel" / t["mask"] for t in meta["tiles"])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(second)  # a valid labeled tile
    with pytest.raises(PairforgeError, match=f"{first}: still the empty template.*255"):
        _cli("import-labels", tmp / "badlabel", "--data", tmp / "bad")
    cases = [
        (np.zeros((16, 32), np.uint8), "mask is 32 x 16 px .* tile is 32 x 32"),
        (np.full((32, 32), 3, np.uint8), r"class ids 3 \(1024 px\) are not in .*\[0, 7\]"),
        (np.where(np.eye(32) > 0, 255, 7).astype(np.uint8), "255 .* unlabeled fill: label every"),
    ]
    for array, message in cases:
        Image.fromarray(array).save(first)
        with pytest.raises(PairforgeError, match=message):
            _cli("import-labels", tmp / "badlabel", "--data", tmp / "bad")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(first)
    outside = {**meta, "tiles": [{**meta["tiles"][0], "y": 48}, meta["tiles"][1]]}
    (tmp / "badlabel" / "tiles.json").write_text(json.dumps(outside))
    with pytest.raises(PairforgeError, match=r"y 48, .*lies outside sample .m\d. \(64 x 128 px\)"):
        _cli("import-labels", tmp / "badlabel", "--data", tmp / "bad")
    (tmp / "badlabel" / "tiles.json").write_text(json.dumps({**meta, "dataset": "other"}))
    with pytest.raises(PairforgeError, match="tiles of dataset 'other'.*'toy'"):
        _cli("import-labels", tmp / "badlabel", "--data", tmp / "bad")
    assert {p.name: p.read_bytes() for p in (tmp / "bad" / "masks").iterdir()} == masks
    with pytest.raises(PairforgeError, match="tiles.json: not found"):
        _cli("import-labels", tmp / "bad-s", "--data", tmp / "bad")


def test_bad_suggest_settings(setup):
    tmp, _ = setup
    for flags, message in [
        (["--diversity", 1.5], "--diversity 1.5: give a weight in"),
        (["--n", 0], "--n 0: ask for at least 1"),
        (["--pool-features", "pca"], "--pool-features 'pca': use 'head'"),
        (["--split", "nope"], "--split 'nope': .* has splits"),
    ]:
        with pytest.raises(PairforgeError, match=message):
            _suggest(tmp, tmp / "data", tmp / "err", *flags)
    shutil.copytree(tmp / "head", tmp / "oldhead")
    meta = json.loads((tmp / "oldhead" / "head.json").read_text())
    (tmp / "oldhead" / "head.json").write_text(json.dumps({**meta, "label_budget": None}))
    with pytest.raises(PairforgeError, match="records no label budget.*--labels N"):
        _cli("suggest", tmp / "oldhead", "--data", tmp / "data", "--out", tmp / "err")


def test_budget_from_tiles_order_parts_and_errors(setup):
    tmp, _ = setup
    ds = load_dataset(tmp / "data")
    drawn = make_budget(ds, 8, 3, 32, "train")
    extra = [t for t in GRID if t not in set(drawn.tiles)][:4]
    budget = budget_from_tiles(ds, [*drawn.tiles, *extra], 32, "train", seed=3)
    assert budget.covers(drawn) and budget.select_tiles[:2] == drawn.select_tiles
    assert budget.select_tiles[2] == extra[3] and budget.summary()["tiles"] == 12
    with pytest.raises(PairforgeError, match=r"\('m0', y 16, x 0\) is not a 32 px grid tile"):
        budget_from_tiles(ds, [("m0", 16, 0)], 32)
    with pytest.raises(PairforgeError, match="listed twice"):
        budget_from_tiles(ds, [("m0", 0, 0), ("m0", 0, 0)], 32)
    with pytest.raises(PairforgeError, match="'m3', y 0, x 0"):  # a val sample
        budget_from_tiles(ds, [("m3", 0, 0)], 32)


def test_bench_suggest_quick_loop(setup, tmp_path):
    tmp, _ = setup
    bench = load_bench("bench_suggest")
    result = bench.main(["--data", str(tmp / "data"), "--image-run", str(tmp / "run"),
                         "--seeds", "0,1", "--rounds", "4,8,12", "--quick",
                         "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])  # fmt: skip
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 3 and json.loads((tmp_path / "b.json").read_text())["rows"]
    for seed in (0, 1):
        mine = {(r["arm"], r["tiles"]): r for r in rows if r["seed"] == seed}
        first = make_budget(load_dataset(tmp / "data"), 4, seed, 32, "train")
        assert mine["random", 4]["miou"] == mine["suggested", 4]["miou"]  # one shared head
        assert mine["random", 12]["labels"] == make_budget(
            load_dataset(tmp / "data"), 12, seed, 32, "train").summary()  # fmt: skip
        picked = [
            tuple(t) for r in (mine["suggested", 8], mine["suggested", 12]) for t in r["picked"]
        ]
        assert len(picked) == 8 and len(set(picked)) == 8 and not set(picked) & set(first.tiles)
        assert mine["suggested", 12]["labels"]["tiles"] == 12
    line = result["summary"]["rounds"][2]
    assert line["tiles"] == 12 and line["suggested_minus_random"]["n"] == 2
    assert result["summary"]["goal"]["suggested_tiles"] == 8
    assert "| 12 |" in (tmp_path / "b.md").read_text() and "Goal: 8 suggested vs 12" in (
        tmp_path / "b.md").read_text()  # fmt: skip


@pytest.mark.slow
def test_bench_suggest_final_segmenters_resume(setup, tmp_path):
    tmp, _ = setup
    bench = load_bench("bench_suggest")
    flags = ["--data", str(tmp / "data"), "--image-run", str(tmp / "run"), "--seeds", "0,1",
             "--rounds", "4,8", "--quick", "--work", str(tmp_path / "work"), "--final",
             "--markdown", str(tmp_path / "b.md")]  # fmt: skip
    result = bench.main(flags)
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 2
    # Distilled on exactly each head's budget (the budget file), scored on the test split.
    for row in rows:
        assert 0 < row["final_miou"] <= 1
        assert row["final_labels"]["fingerprint"] == row["labels"]["fingerprint"]
    assert result["summary_final"]["rounds"][1]["suggested_minus_random"]["n"] == 2
    assert "## Final segmenter" in (tmp_path / "b.md").read_text()
    # Rerun: heads and distillations are read back from --work, nothing is fitted again.
    kept = sorted((tmp_path / "work").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in kept]
    again = bench.main(flags)
    assert [p.stat().st_mtime_ns for p in kept] == stamps
    assert [r["final_miou"] for r in again["rows"]] == [r["final_miou"] for r in rows]
    assert [r["miou"] for r in again["rows"]] == [r["miou"] for r in rows]


def test_import_with_ignore_index_keeps_unlabeled_pixels_and_labels_new_samples(setup):
    tmp, head = setup
    data = load_dataset(tmp / "data")
    spec = data.spec.model_copy(update={"ignore_index": 255})
    with DatasetWriter(tmp / "ign", spec) as writer:  # m2: a measurement nobody labeled yet
        for split, ids in data.spec.splits.items():
            for sample_id in ids:
                image, mask = data.read_pair(sample_id)
                writer.add(sample_id, image, None if sample_id == "m2" else mask, split=split)
    assert not (tmp / "ign" / "masks" / "m2.png").exists()
    _suggest(tmp, tmp / "ign", tmp / "ign-s", "--n", 16, "--export", tmp / "ignlabel")
    meta = json.loads((tmp / "ignlabel" / "tiles.json").read_text())
    assert meta["fill_id"] == 255 and "ignore_index" in meta["fill_meaning"]
    for t in meta["tiles"]:
        template = np.array(Image.open(tmp / "ignlabel" / t["mask"]))
        template[:8] = 7  # top 8 rows labeled 'grain'; the rest stays unlabeled
        Image.fromarray(template).save(tmp / "ignlabel" / t["mask"])
    _cli("import-labels", tmp / "ignlabel", "--data", tmp / "ign")
    new = np.asarray(Image.open(tmp / "ign" / "masks" / "m2.png"))
    expected = np.full((64, 128), 255, np.uint8)
    for t in meta["tiles"]:
        if t["sample_id"] == "m2":
            expected[t["y"] : t["y"] + 8, t["x"] : t["x"] + 32] = 7
    assert np.array_equal(new, expected) and (expected == 7).any()
    budget = json.loads((tmp / "ignlabel" / "budget.json").read_text())
    assert len(budget["tiles"]) == 24 and budget["pool"] == 24


def test_train_on_a_budget_file(setup, tmp_path):
    """`pairforge train --labels BUDGET.json`: a mask run reads exactly the file's tiles
    (recorded as its label_budget); a budget of tiles smaller than the crops is refused."""
    from test_train_helpers import tiny_config

    from pairforge.train.loop import train

    tmp, head = setup
    budget_file = tmp_path / "budget.json"
    budget_file.write_text(json.dumps(head.label_budget.to_dict()))
    config = tiny_config(tmp / "data", "task=mask", "data.crop_size=32", "data.resolution=16",
                         f"data.labels={budget_file}", "optim.max_steps=2")  # fmt: skip
    run = train(config, tmp_path / "run", progress=False)
    record = json.loads((run / "model" / "pairforge.json").read_text())
    assert record["label_budget"] == head.label_budget.to_dict()
    small = tiny_config(tmp / "data", "task=mask", "data.crop_size=64", "data.resolution=16",
                        f"data.labels={budget_file}", "optim.max_steps=2")  # fmt: skip
    with pytest.raises(PairforgeError, match="its tiles are 32 px, smaller than data.crop_size 64"):
        train(small, tmp_path / "run2", progress=False)
    other_tile = tiny_config(tmp / "data", "task=mask", "data.crop_size=32",
                             "data.resolution=16", "data.label_tile=64",
                             f"data.labels={budget_file}", "optim.max_steps=2")  # fmt: skip
    with pytest.raises(PairforgeError, match="data.labels .*tiles are 32 px, not 64 px"):
        train(other_tile, tmp_path / "run3", progress=False)
