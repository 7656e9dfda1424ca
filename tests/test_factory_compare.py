"""eval factory: pairing per (budget, seed), exact paired differences, per class, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pairforge.errors import PairforgeError
from pairforge.eval.factory_compare import compare_factory, format_factory, write_factory

SCORES = {  # method -> seed -> (mean, grain IoU, pore IoU)
    "baseline": {0: (0.60, 0.8, 0.4), 1: (0.62, 0.8, 0.44), 2: (0.58, 0.8, 0.36)},
    "head": {0: (0.65, 0.8, 0.5), 1: (0.66, 0.8, 0.52), 2: (0.64, 0.8, 0.48)},
    "distill": {0: (0.70, 0.85, 0.55), 1: (0.71, 0.86, 0.56), 2: (0.69, 0.84, 0.54)},
    "distill-synthetic": {0: (0.70, 0.85, 0.55), 1: (0.72, 0.86, 0.58), 2: (0.68, 0.84, 0.52)},
}


def _result(mean, grain, pore, seed, fingerprint="abc", n=16, budget=8):
    return {
        "mean_iou": mean,
        "per_class_iou": {"grain": grain, "pore": pore},
        "num_images": n,
        "labels": {"budget": budget, "seed": seed, "fingerprint": f"{fingerprint}{seed}",
                   "tiles": 8, "fit_tiles": 6, "select_tiles": 2, "pixels": 131072},
    }  # fmt: skip


def _write(root: Path, scores=SCORES, **kwargs) -> Path:
    for method, by_seed in scores.items():
        for seed, (mean, grain, pore) in by_seed.items():
            path = root / method / f"b8-s{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_result(mean, grain, pore, seed, **kwargs)))
    return root


def test_paired_differences_overall_and_per_class(tmp_path):
    result = compare_factory(_write(tmp_path / "results"))
    (row,) = result["rows"]
    assert row["budget"] == "8" and row["seeds"] == [0, 1, 2] and row["tiles"] == 8
    assert row["baseline"]["mean"] == pytest.approx(0.60)
    diff = row["distill_vs_baseline"]
    assert diff["differences"] == pytest.approx([0.10, 0.09, 0.11])
    assert diff["mean"] == pytest.approx(0.10) and diff["verdict"] == "significant gain"
    assert row["distill_vs_head"]["mean"] == pytest.approx(0.05)
    # distill-synthetic - distill: 0, +0.01, -0.01 -> mean 0, interval holds 0.
    same = row["distill-synthetic_vs_distill"]
    assert same["mean"] == pytest.approx(0.0, abs=1e-12)
    assert same["verdict"] == "no significant difference"
    pore = row["per_class"]["pore"]
    assert pore["distill_vs_baseline"]["mean"] == pytest.approx(0.15)
    assert pore["baseline"]["mean"] == pytest.approx(0.40)
    text = format_factory(result)
    assert "pore" in text and "+10.0 [" in text and "no significant difference" in text


def test_chain_kept_fractions_and_files(tmp_path):
    root = tmp_path / "chain"
    _write(root / "eval" / "results")
    (root / "pseudo" / "b8-s0").mkdir(parents=True)
    (root / "pseudo" / "b8-s0" / "pseudolabel.json").write_text(json.dumps({"kept_fraction": 0.8}))
    (root / "synthetic" / "b8-s0-filtered").mkdir(parents=True)
    (root / "synthetic" / "b8-s0-filtered" / "filter.json").write_text(
        json.dumps({"kept_fraction": 0.25})
    )
    result = compare_factory(root / "eval" / "results", root)
    chain = result["rows"][0]["chain"]
    assert chain["0"] == {"pseudo_kept_fraction": 0.8, "filter_kept_fraction": 0.25}
    assert chain["1"] == {}
    paths = write_factory(result, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["rows"][0]["budget"] == "8"
    assert paths["plot"].stat().st_size > 1000 and "0.250" in paths["table"].read_text()


def test_different_tiles_or_test_sets_are_refused(tmp_path):
    root = _write(tmp_path / "r")
    (root / "head" / "b8-s1.json").write_text(json.dumps(_result(0.6, 0.8, 0.4, 1, "zzz")))
    with pytest.raises(PairforgeError, match="different labeled tiles"):
        compare_factory(root)
    root = _write(tmp_path / "r2")
    (root / "distill" / "b8-s2.json").write_text(json.dumps(_result(0.6, 0.8, 0.4, 2, n=9)))
    with pytest.raises(PairforgeError, match="9"):
        compare_factory(root)


def test_missing_baseline_and_bad_files(tmp_path):
    root = _write(tmp_path / "r", {"head": SCORES["head"]})
    with pytest.raises(PairforgeError, match="no baseline"):
        compare_factory(root)
    root = _write(tmp_path / "r2")
    (root / "head" / "b8-s0.json").write_text("{not json")
    with pytest.raises(PairforgeError, match="b8-s0.json"):
        compare_factory(root)
    with pytest.raises(PairforgeError, match="not a folder"):
        compare_factory(tmp_path / "nothing")
