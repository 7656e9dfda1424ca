"""Downstream experiment end to end on a tiny configuration, plus its pieces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_fixtures import write_dataset

from pairforge.data.budget import make_budget
from pairforge.data.dataset import load_dataset
from pairforge.data.views import downsample_mask
from pairforge.errors import PairforgeError
from pairforge.eval.downstream import DownstreamConfig, run_downstream, write_downstream
from pairforge.eval.downstream_data import labeled_tiles, repeat_order
from pairforge.eval.downstream_summary import format_downstream_table, summarize_runs

pytestmark = pytest.mark.usefixtures("single_thread")


def write_set(root, real, size, seed, count=6, tile=16, budget="draw"):
    """A tiny synthetic set (16 px pairs) whose manifest says its joint generator read the
    budget (size, seed) of `real` (budget=None: no budget recorded, every mask)."""
    if budget == "draw":
        budget = make_budget(load_dataset(real), size, seed, tile).to_dict()
    folder = write_dataset(root, count, 16, seed=100 + 10 * (size or 0) + seed)
    entry = {"path": None, "task": "joint", "sha256": {}, "reads_masks": True}
    manifest = {"pipeline": "joint", "checkpoints": {"joint": {**entry, "label_budget": budget}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    real = write_dataset(root / "real", 6, 48, seed=0, splits={"train": 3, "val": 1, "test": 2})
    sets = {
        (size, seed): write_set(root / f"syn-{size}-{seed}", real, size, seed)
        for size in (4, 8)
        for seed in (0, 1, 2)
    }
    return real, sets


def test_tiles_count_every_pixel_once(datasets):
    real, _ = datasets
    ds = load_dataset(real)
    # 48 px measurement, 32 px tiles -> starts 0 and 16 (flush): 4 tiles, 16 px at res 16.
    tiles = labeled_tiles(ds, "test", 32, 16, ds.normalizer)
    assert tiles["image"].shape == (8, 2, 16, 16) and tiles["ids"] == ["s004", "s005"]
    counted = int((tiles["mask"] != 255).sum())
    assert counted == 2 * 24 * 24  # two measurements of 48 px at half resolution


def test_tiny_experiment_end_to_end(datasets, tmp_path):
    real, sets = datasets
    config = DownstreamConfig(
        budgets=[4, 8],
        seeds=[0, 1, 2],
        steps=6,
        batch_size=4,
        crop_size=16,
        resolution=16,
        synthetic_fraction=0.5,
        max_synthetic=5,
        encoder="mobilenet_v2",  # builds in 0.1 s; resnet18 takes ~3 s per run on this CPU
    )
    lines = []
    result = run_downstream(real, list(sets.values()), config, log=lines.append)
    runs = result["runs"]
    # Per seed and budget: real, synthetic and mixed.
    assert len(runs) == 3 * 2 * 3 and len(lines) == len(runs)
    for run in runs:
        assert run["selection"].startswith("select_miou") and 1 <= run["best_epoch"] <= 2
        # The selected epoch is the first best of the recorded selection curve (select tiles),
        # and the test mIoU the mean of the per-class test IoUs.
        curve = run["select_miou_per_epoch"]
        assert len(curve) == run["epochs"] and run["best_select_miou"] == max(curve)
        assert run["best_epoch"] == 1 + curve.index(max(curve))
        assert len(run["test_per_class_iou"]) == 2
        assert run["test_miou"] == pytest.approx(np.mean(run["test_per_class_iou"]), abs=1e-12)
        # Every run's labels are its budget's, whatever the condition.
        size = int(run["budget"])
        assert run["labels"]["tiles"] == size and run["labels"]["seed"] == run["seed"]
        assert run["labels"]["select_tiles"] == size // 4
        assert run["labels"]["pixels"] == size * 16 * 16
        # A matching set is used at its own (budget, seed) only.
        expected = None if run["condition"] == "real" else str(sets[(size, run["seed"])])
        assert run["synthetic_set"] == expected
    # All runs: same samples per epoch (the largest set, mixed 6 fit tiles + 6 -> capped at
    # the set's 6 pairs) and the same epochs.
    assert {(r["epoch_samples"], r["epochs"]) for r in runs} == {(12, 2)}
    mixed = [r for r in runs if r["condition"] == "mixed" and r["budget"] == "4"]
    assert all(r["n_real"] == 3 and r["n_synthetic"] == 3 for r in mixed)
    synthetic = [r for r in runs if r["condition"] == "synthetic"]
    assert all(r["n_synthetic"] == 5 and r["n_real"] == 0 for r in synthetic)
    summary = {(r["condition"], r["budget"]): r for r in result["summary"]}
    assert set(summary) == {(c, b) for c in ("real", "synthetic", "mixed") for b in ("4", "8")}
    row = summary[("real", "4")]
    values = [r["test_miou"] for r in runs if r["condition"] == "real" and r["budget"] == "4"]
    assert row["n_seeds"] == 3 and row["test_miou_mean"] == pytest.approx(np.mean(values))
    assert row["test_miou_std"] == pytest.approx(np.std(values, ddof=1))
    # Labels touched: the budget's, identical for every condition at one budget.
    assert {summary[(c, "8")]["labels"]["tiles"] for c in ("real", "synthetic", "mixed")} == {8}
    assert summary[("mixed", "8")]["labels"]["pixels"] == 8 * 256
    comparisons = {(c["condition"], c["budget"]): c for c in result["comparisons"]}
    assert set(comparisons) == {(c, b) for c in ("synthetic", "mixed") for b in ("4", "8")}
    diff = comparisons[("mixed", "8")]
    by_seed = {(r["condition"], r["seed"]): r["test_miou"] for r in runs if r["budget"] == "8"}
    assert diff["differences"] == [by_seed[("mixed", s)] - by_seed[("real", s)] for s in range(3)]
    assert result["data"]["test_measurements"] == ["s004", "s005"]
    assert "val_measurements" not in result["data"] and "val_split" not in result["settings"]

    paths = write_downstream(result, tmp_path / "eval")
    assert json.loads(paths["json"].read_text())["summary"] == json.loads(
        json.dumps(result["summary"])
    )
    table = paths["table"].read_text()
    assert "| mixed | 4 | 4 / 1024 | 3 |" in table and "Between seeds vary" in table
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_repeat_order_covers_every_sample_evenly():
    order = repeat_order(3, 10, seed=0)
    assert order.shape == (10,)
    assert sorted(order.bincount().tolist()) == [3, 3, 4]
    assert sorted(order[:3].tolist()) == [0, 1, 2]  # whole permutations first
    assert order.tolist() == repeat_order(3, 10, seed=0).tolist()


def test_summary_of_one_seed_has_no_std():
    runs = [
        {
            "condition": "real",
            "budget": 2,
            "seed": 0,
            "n_real": 2,
            "n_synthetic": 0,
            "test_miou": 0.5,
            "best_select_miou": 0.4,
            "labels": {"budget": "2", "tiles": 2, "fit_tiles": 2, "select_tiles": 0,
                       "pixels": 512, "tile_size": 16, "split": "train"},
        }
    ]  # fmt: skip
    (row,) = summarize_runs(runs)
    assert row["test_miou_std"] is None and row["test_miou_mean"] == 0.5
    assert row["test_miou_ci"] is None and row["select_miou_mean"] == 0.4
    table = format_downstream_table({"summary": [row], "comparisons": []})
    assert "| real | 2 | 2 / 512 | 1 | 50.00 | - |" in table


def test_missing_test_labels_and_bad_settings_are_errors(tmp_path):
    real = write_dataset(tmp_path / "r", 4, 32, labeled=3, splits={"train": 2, "val": 1, "test": 1})
    with pytest.raises(PairforgeError, match="split 'test' has no labeled samples"):
        run_downstream(
            real, None, DownstreamConfig(conditions=["real"], crop_size=32, resolution=16)
        )
    with pytest.raises(PairforgeError, match="--synthetic-fraction 1.0"):
        DownstreamConfig(synthetic_fraction=1.0).validate()
    with pytest.raises(PairforgeError, match="--conditions"):
        DownstreamConfig(conditions=["fake"]).validate()


# Real-only, one seed, a few steps: the smallest run that still selects among epochs.
TINY_REAL = dict(
    conditions=["real"],
    budgets=[4],
    seeds=[0],
    steps=4,
    batch_size=2,
    crop_size=16,
    resolution=8,
    encoder="mobilenet_v2",
)


def test_test_masks_change_test_scores_only_never_the_selection(datasets, tmp_path):
    real, _ = datasets
    flipped = tmp_path / "flipped"
    shutil.copytree(real, flipped)
    ds = load_dataset(real)
    for sample_id in ds.ids("test"):  # swap binder and grain in the test masks only
        path = flipped / "masks" / f"{sample_id}.png"
        Image.fromarray((1 - ds.read_mask(sample_id)).astype(np.uint8)).save(path)
    assert load_dataset(flipped).read_mask("s004").tolist() == (1 - ds.read_mask("s004")).tolist()
    config = DownstreamConfig(**TINY_REAL)
    (first,) = run_downstream(real, None, config, log=None)["runs"]
    (second,) = run_downstream(flipped, None, config, log=None)["runs"]
    for key in ("best_epoch", "best_select_miou", "select_miou_per_epoch", "epochs", "labels"):
        assert first[key] == second[key], key
    assert first["test_miou"] != pytest.approx(second["test_miou"], abs=1e-6)
    assert first["test_per_class_iou"] != second["test_per_class_iou"]


def test_test_miou_of_a_constant_prediction_is_the_known_value(datasets, monkeypatch):
    """Predicting binder everywhere scores IoU(binder) = its pixel share, IoU(grain) = 0."""
    import pairforge.core.supervised as supervised

    real, _ = datasets

    def all_binder(model, images, batch_size=8, **kwargs):
        return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)

    monkeypatch.setattr(supervised, "predict_supervised", all_binder)
    (run,) = run_downstream(real, None, DownstreamConfig(**TINY_REAL), log=None)["runs"]
    ds = load_dataset(real)
    # The test measurements at evaluation scale (48 px -> 24 px, majority), counted once.
    masks = [downsample_mask(ds.read_mask(i), 2, 2) for i in ("s004", "s005")]
    binder_share = sum(int((m == 0).sum()) for m in masks) / sum(m.size for m in masks)
    assert 0.3 < binder_share < 0.9  # both classes present, so both IoUs count
    assert run["test_per_class_iou"] == pytest.approx([binder_share, 0.0], abs=1e-12)
    assert run["test_miou"] == pytest.approx(binder_share / 2, abs=1e-12)


@pytest.mark.parametrize(
    ("flags", "shared", "roles"),
    [
        ({"test_split": "train"}, "s000, s001, s002", "label split 'train' and the test split"),
        ({"label_split": "test"}, "s004, s005", "label split 'test' and the test split"),
    ],
)
def test_splits_sharing_samples_are_refused_naming_the_ids(datasets, flags, shared, roles):
    real, _ = datasets
    config = DownstreamConfig(**{**TINY_REAL, **flags})
    with pytest.raises(PairforgeError, match=f"samples {shared} are in both the {roles}") as err:
        run_downstream(real, None, config, log=None)
    assert "--label-split and --test-split" in str(err.value)
