"""The few-label comparison (pairforge.eval.few_label): paired per seed, only over identical
budgets, with the labels every row touched."""

from __future__ import annotations

import json

import pytest

from pairforge.errors import PairforgeError
from pairforge.eval.few_label import compare_few_label, format_few_label_table, write_few_label


def _labels(budget: str, seed: int, tiles: int) -> dict:
    return {
        "budget": budget,
        "tiles": tiles,
        "fit_tiles": tiles - tiles // 4,
        "select_tiles": tiles // 4,
        "pixels": tiles * 128 * 128,
        "seed": seed,
        "fingerprint": f"fp-{budget}-{seed}",
    }


def _downstream(real: dict, mixed: dict) -> dict:
    runs = []
    for condition, scores in (("real", real), ("mixed", mixed)):
        for (budget, seed), miou in scores.items():
            tiles = 8 if budget == "8" else 512
            labels = _labels(budget, seed, tiles)
            runs.append({"condition": condition, "budget": budget, "seed": seed,
                         "test_miou": miou, "labels": labels})  # fmt: skip
    return {"runs": runs, "data": {"n_test_tiles": 128}}


def _head(budget: str, seed: int, miou: float, tiles: int = 8) -> dict:
    return {"mean_iou": miou, "num_images": 128, "split": "test",
            "labels": _labels(budget, seed, tiles)}  # fmt: skip


REAL = {("8", 0): 0.70, ("8", 1): 0.72, ("8", 2): 0.71, ("all", 0): 0.85}
MIXED = {("8", 0): 0.69, ("8", 1): 0.73, ("8", 2): 0.70}


def test_pairs_per_seed_and_states_the_labels(tmp_path):
    heads = [
        (f"h{s}", _head("8", s, REAL[("8", s)] + d)) for s, d in ((0, 0.02), (1, 0.03), (2, 0.04))
    ]
    result = compare_few_label(_downstream(REAL, MIXED), "d.json", heads)
    row = {r["budget"]: r for r in result["rows"]}["8"]
    assert row["tiles"] == 8 and row["pixels"] == 8 * 128 * 128 and row["seeds"] == [0, 1, 2]
    assert (row["fit_tiles"], row["select_tiles"]) == (6, 2)
    diff = row["head_vs_baseline"]
    assert diff["differences"] == pytest.approx([0.02, 0.03, 0.04])
    half = 4.302652729911275 * 0.01 / 3**0.5
    assert diff["ci"] == pytest.approx([0.03 - half, 0.03 + half])
    assert diff["verdict"] == "significant gain"
    assert row["mixed_vs_baseline"]["verdict"] == "no significant difference"
    assert [r["budget"] for r in result["rows"]] == ["8", "all"]
    assert "head" not in result["rows"][1]  # no head at 'all': no invented figure
    table = format_few_label_table(result)
    assert "| 8 | 8 (6 + 2) / 131,072 | 3 |" in table
    assert "no significant difference" in table and "+3.0 [" in table
    paths = write_few_label(result, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["rows"][0]["budget"] == "8"
    assert paths["plot"].stat().st_size > 1000


def test_refuses_pairs_that_read_different_labels():
    head = _head("8", 0, 0.7)
    head["labels"]["fingerprint"] = "other"
    with pytest.raises(PairforgeError, match="read different labeled tiles"):
        compare_few_label(_downstream(REAL, MIXED), "d.json", [("h.json", head)])
    with pytest.raises(PairforgeError, match="no baseline run in d.json"):
        compare_few_label(_downstream(REAL, MIXED), "d.json", [("h.json", _head("32", 0, 0.7))])
    fewer = _head("8", 0, 0.7)
    fewer["num_images"] = 64
    with pytest.raises(PairforgeError, match="scored on 64 test tiles"):
        compare_few_label(_downstream(REAL, MIXED), "d.json", [("h.json", fewer)])
    unbudgeted = _head("8", 0, 0.7)
    del unbudgeted["labels"]
    with pytest.raises(PairforgeError, match="records no label budget"):
        compare_few_label(_downstream(REAL, MIXED), "d.json", [("h.json", unbudgeted)])
