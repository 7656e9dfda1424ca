"""Label budgets (pairforge.data.budget): deterministic nested draws, the budgeted view exposes
exactly the chosen tiles' masks, the draw reads no mask values, and crops stay inside."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pairforge.core.stats import format_difference, mean_ci, paired_difference
from pairforge.data.budget import (
    LabelBudget,
    make_budget,
    parse_labels,
    require_covered,
)
from pairforge.data.budget_view import BudgetedDataset, budget_tiles
from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.dataset import load_dataset
from pairforge.data.grains import write_grains_dataset
from pairforge.data.views import RandomCropDataset
from pairforge.errors import PairforgeError

TILE = 32


@pytest.fixture(scope="module")
def grains(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget") / "grains"
    write_grains_dataset(root, preset="tiny", seed=3, progress=False)
    return root


def _rewrite_masks(root, keep: LabelBudget | None, splits=("train", "val", "test")):
    """Give every mask pixel outside `keep`'s tiles another class (ids 0..2 cycled)."""
    ds = load_dataset(root)
    inside = {}
    if keep is not None:
        for sample_id, y, x in keep.tiles:
            inside.setdefault(sample_id, []).append((y, x))
    for split in splits:
        for sample_id in ds.ids(split):
            path = ds.mask_path(sample_id)
            mask = np.asarray(Image.open(path)).copy()
            new = (mask + 1) % 3
            for y, x in inside.get(sample_id, []):
                new[y : y + keep.tile_size, x : x + keep.tile_size] = mask[
                    y : y + keep.tile_size, x : x + keep.tile_size
                ]
            Image.fromarray(new.astype(mask.dtype)).save(path)


def test_budgets_are_deterministic_nested_and_split_into_fit_and_select(grains):
    ds = load_dataset(grains)
    b8, b32, everything = (make_budget(ds, n, 0, TILE) for n in (8, 32, None))
    assert make_budget(ds, 8, 0, TILE) == b8
    assert b32.tiles[:8] == b8.tiles
    assert everything.tiles[:32] == b32.tiles
    assert b32.covers(b8) and everything.covers(b32) and not b8.covers(b32)
    # 4 train measurements of 128 x 256 px: 4 * 4 * 8 tiles of 32 px
    assert everything.pool == 128 and len(everything.tiles) == 128
    assert {t[0] for t in everything.tiles} == set(ds.ids("train"))
    assert (len(b8.fit_tiles), len(b8.select_tiles)) == (6, 2)
    assert set(b8.select_tiles) <= set(b32.select_tiles)
    assert set(b8.fit_tiles) <= set(b32.fit_tiles)
    assert make_budget(ds, 3, 0, TILE).select_tiles == []
    other_seed = make_budget(ds, 8, 1, TILE)
    assert other_seed.tiles != b8.tiles
    assert b8.summary()["pixels"] == 8 * TILE * TILE
    assert b8.summary()["fingerprint"] == make_budget(ds, 8, 0, TILE).fingerprint
    assert len({b.fingerprint for b in (b8, b32, other_seed)}) == 3
    assert LabelBudget.from_dict(b32.to_dict()) == b32


def test_budget_draw_reads_no_mask_values(grains, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(grains, copy)
    _rewrite_masks(copy, keep=None)
    for n in (8, None):
        first = make_budget(load_dataset(grains), n, 2, TILE)
        second = make_budget(load_dataset(copy), n, 2, TILE)
        assert first.tiles == second.tiles


def test_view_exposes_exactly_the_budget_tiles(grains, tmp_path):
    ds = load_dataset(grains)
    budget = make_budget(ds, 8, 0, TILE)
    view = BudgetedDataset(ds, budget)
    labeled_pixels = 0
    for sample_id in ds.ids():
        if sample_id not in budget.ids:
            assert not view.has_mask(sample_id) and view.read_mask(sample_id) is None
            continue
        full, seen = ds.read_mask(sample_id), view.read_mask(sample_id)
        expected = np.zeros(full.shape, dtype=bool)
        for tile_id, y, x in budget.tiles:
            if tile_id == sample_id:
                expected[y : y + TILE, x : x + TILE] = True
        np.testing.assert_array_equal(seen != IGNORE_INDEX, expected)
        np.testing.assert_array_equal(seen[expected], full[expected])
        labeled_pixels += int(expected.sum())
    assert labeled_pixels == budget.labeled_pixels
    # images are not budgeted
    sample = budget.ids[0]
    np.testing.assert_array_equal(view.read_image(sample), ds.read_image(sample))


def test_budget_tiles_and_crops_do_not_change_when_outside_labels_do(grains, tmp_path):
    budget = make_budget(load_dataset(grains), 8, 1, TILE)
    copy = tmp_path / "copy"
    shutil.copytree(grains, copy)
    _rewrite_masks(copy, keep=budget)
    views = [BudgetedDataset(load_dataset(root), budget) for root in (grains, copy)]
    tiles = [budget_tiles(v, "fit", 32, 16) for v in views]
    assert tiles[0]["image"].shape == (6, 2, 16, 16)
    assert tiles[0]["source"] == [tiles[0]["source"][i] for i in range(6)]
    assert [s for s in tiles[0]["source"]] == budget.fit_tiles
    assert (tiles[0]["mask"] != IGNORE_INDEX).all()
    assert np.array_equal(tiles[0]["mask"].numpy(), tiles[1]["mask"].numpy())
    # two 16 px crops per side of each 32 px tile
    assert budget_tiles(views[0], "select", 16, 16)["image"].shape[0] == 2 * 4
    crops = [
        RandomCropDataset(v, budget.ids, crop_size=16, resolution=16, require_mask=True, seed=4)
        for v in views
    ]
    for index in range(40):
        a, b = crops[0][index], crops[1][index]
        assert (a["mask"] != IGNORE_INDEX).all()
        assert np.array_equal(a["mask"].numpy(), b["mask"].numpy())
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())


def test_crops_of_a_large_budget_cross_tile_borders(grains):
    ds = load_dataset(grains)
    view = BudgetedDataset(ds, make_budget(ds, None, 0, TILE))
    crops = RandomCropDataset(view, view.budget.ids, crop_size=32, resolution=32, seed=0)
    assert crops.with_mask
    # every position is reachable: offsets are not all multiples of the tile size
    rng = np.random.default_rng([0, 0, 0])
    positions = {crops._budget_position(0, rng, 128, 256) for _ in range(50)}
    assert any(y % TILE or x % TILE for y, x in positions)
    assert all(y + 32 <= 128 and x + 32 <= 256 for y, x in positions)


def test_bad_budgets_are_refused_with_the_fix(grains):
    ds = load_dataset(grains)
    with pytest.raises(PairforgeError, match="has 128 labeled tiles of 32 px; ask for at most 128"):
        make_budget(ds, 129, 0, TILE)
    with pytest.raises(PairforgeError, match="no split named 'nope'"):
        make_budget(ds, 2, 0, TILE, split="nope")
    with pytest.raises(PairforgeError, match="is 128 x 256 px, smaller than the 512 px tiles"):
        make_budget(ds, 2, 0, 512)
    with pytest.raises(PairforgeError, match="--labels 'abc'"):
        parse_labels("abc")
    assert parse_labels("all") is None and parse_labels("8") == 8
    view = BudgetedDataset(ds, make_budget(ds, 2, 0, TILE))
    with pytest.raises(PairforgeError, match="multiple of 24"):
        budget_tiles(view, "fit", 24, 24)
    with pytest.raises(PairforgeError, match="larger than the 32 px label tiles"):
        RandomCropDataset(view, view.budget.ids, crop_size=64, resolution=16)


def test_require_covered_names_both_budgets(grains):
    ds = load_dataset(grains)
    b8, b32 = make_budget(ds, 8, 0, TILE), make_budget(ds, 32, 0, TILE)
    require_covered(b8, b32, "run R")
    with pytest.raises(PairforgeError) as err:
        require_covered(b32, b8, "run R")
    text = str(err.value)
    assert "run R read the budget 32 labeled tiles" in text and "24 of its tiles outside" in text
    assert "evaluated at: 8 labeled tiles of 32 px (6 fit + 2 select)" in text
    with pytest.raises(PairforgeError, match="every mask of its training split"):
        require_covered(None, b32, "run R")
    # a coarser budget is covered when its tiles are unions of the finer grid's cells
    fine = make_budget(ds, None, 0, 16)
    assert fine.covers(make_budget(ds, 4, 0, TILE))


def test_paired_difference_gives_the_t_interval():
    diff = paired_difference({0: 0.72, 1: 0.73, 2: 0.74}, {0: 0.70, 1: 0.70, 2: 0.70})
    assert diff["differences"] == pytest.approx([0.02, 0.03, 0.04])
    half = 4.302652729911275 * 0.01 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert diff["ci"] == pytest.approx([0.03 - half, 0.03 + half])
    assert diff["verdict"] == "significant gain"
    noisy = paired_difference({0: 0.7, 1: 0.8, 2: 0.6}, {0: 0.71, 1: 0.69, 2: 0.7})
    assert noisy["verdict"] == "no significant difference"
    assert format_difference(noisy).endswith(": no significant difference")
    assert mean_ci([1.0])["ci"] is None
    assert paired_difference({0: 1.0}, {0: 0.5, 1: 0.2})["verdict"] == "one seed: no interval"
