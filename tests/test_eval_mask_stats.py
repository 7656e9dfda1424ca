"""Mask statistics on hand-made masks with known answers, and the real-vs-synthetic comparison."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_fixtures import write_dataset

from pairforge.errors import PairforgeError
from pairforge.eval.mask_stats import (
    class_fractions,
    compare_mask_stats,
    connected_components,
    format_mask_stats_table,
    plot_mask_stats,
)
from pairforge.eval.sets import EvalSet, load_eval_set

pytestmark = pytest.mark.usefixtures("single_thread")


def hand_made_masks() -> np.ndarray:
    """Two 6x6 masks. Mask 0: class 1 squares of 4 and 2 px, class 2 diagonal pair, one ignore."""
    first = np.zeros((6, 6), dtype=np.int64)
    first[0:2, 0:2] = 1  # 4 px
    first[4, 4:6] = 1  # 2 px
    first[2, 4] = 2
    first[3, 5] = 2  # touches (2, 4) only diagonally
    first[5, 0] = 255
    second = np.ones((6, 6), dtype=np.int64)  # one 36 px component of class 1
    return np.stack([first, second])


def test_class_fractions_ignore_unlabeled_pixels():
    fractions = class_fractions(hand_made_masks(), 3)
    labeled = 36 + 35
    assert fractions.tolist() == pytest.approx([27 / labeled, 42 / labeled, 2 / labeled])
    assert class_fractions(np.full((1, 2, 2), 255), 2).tolist() == [0.0, 0.0]


def test_components_4_and_8_connectivity():
    counts, sizes = connected_components(hand_made_masks(), 3, connectivity=4)
    assert counts.tolist() == [[1, 2, 2], [0, 1, 0]]
    assert sorted(sizes[1].tolist()) == [2, 4, 36]
    assert sizes[2].tolist() == [1, 1]
    counts8, sizes8 = connected_components(hand_made_masks(), 3, connectivity=8)
    assert counts8[0, 2] == 1 and sizes8[2].tolist() == [2]  # diagonal neighbors join
    assert sizes8[0].tolist() == [27]  # the binder, with (5, 0) ignored, is one piece
    with pytest.raises(PairforgeError, match="connectivity 6"):
        connected_components(hand_made_masks(), 3, connectivity=6)


class Identity:
    def encode(self, x):
        return x

    def decode(self, y):
        return y


def evalset(masks, images, source) -> EvalSet:
    return EvalSet(
        source=source,
        images=images.astype(np.float32),
        masks=masks,
        labeled=np.arange(len(masks)),
        normalizer=Identity(),
        channel_names=["height"],
        class_names=["a", "b", "c"],
        class_colors=np.zeros((3, 3), np.uint8),
    )


def test_compare_known_values(tmp_path):
    masks = hand_made_masks()
    # Channel value = 10 * class index: per-class values are exact and constant.
    real = evalset(masks, (10.0 * np.where(masks == 255, 0, masks))[:, None], "real")
    fake_masks = masks.copy()
    fake_masks[1] = 0  # synthetic: second mask all class 0
    shifted = 10.0 * np.where(fake_masks == 255, 0, fake_masks) + 3.0
    fake = evalset(fake_masks, shifted[:, None], "fake")
    result = compare_mask_stats(real, fake, connectivity=4, bins=8)
    by_class = {c["class"]: c for c in result["classes"]}
    assert by_class["b"]["components_per_mask_real"] == 1.5
    assert by_class["b"]["components_per_mask_fake"] == 1.0
    # Real sizes {2, 4, 36} vs synthetic {2, 4}: W1 = integral |F_real - F_fake| over size.
    assert by_class["b"]["size_wasserstein"] == pytest.approx(
        (4 - 2) * abs(1 / 3 - 1 / 2) + (36 - 4) * abs(2 / 3 - 1)
    )
    assert by_class["c"]["size_wasserstein"] == 0.0
    # Values shifted by 3 units in every class: W1 = 3 for each class present in both.
    values = {e["class"]: e for e in result["channels"][0]["per_class"]}
    assert values["b"]["wasserstein"] == pytest.approx(3.0)
    assert values["a"]["mean_real"] == 0.0 and values["a"]["mean_fake"] == 3.0
    assert values["a"]["n_fake_px"] == 27 + 36
    assert sum(values["b"]["hist_real"]) == values["b"]["n_real_px"] == 42
    assert result["summary"]["fraction_l1"] > 0
    table = format_mask_stats_table(result)
    assert "| b | 0.592 |" in table
    paths = plot_mask_stats(result, tmp_path)
    assert [p.name for p in paths] == [
        "mask_stats_fractions.png",
        "mask_stats_sizes.png",
        "mask_stats_values.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_identical_sets_have_zero_distances(tmp_path):
    root = write_dataset(tmp_path / "d", 4, 32, seed=3)
    data = load_eval_set(root)
    result = compare_mask_stats(data, data)
    assert result["summary"]["fraction_l1"] == 0.0
    assert all(c["size_wasserstein"] in (0.0, None) for c in result["classes"])
    assert all(e["wasserstein"] == 0.0 for ch in result["channels"] for e in ch["per_class"])


def test_unlabeled_synthetic_set_is_an_error(tmp_path):
    real = load_eval_set(write_dataset(tmp_path / "r", 2, 16))
    fake = load_eval_set(write_dataset(tmp_path / "f", 2, 16, labeled=0))
    with pytest.raises(PairforgeError, match="synthetic dataset has no masks"):
        compare_mask_stats(real, fake)
