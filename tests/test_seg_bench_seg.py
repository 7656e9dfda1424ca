"""bench/bench_seg.py runs end to end on a tiny image run: head and baseline on one budget."""

from bench_modules import load_bench
from test_seg_cli import _tiny_run, _toy_dataset


def _bench():
    return load_bench("bench_seg")


def test_bench_seg_trains_head_and_baseline_on_the_budget(tmp_path, capsys):
    _tiny_run(tmp_path / "run")
    _toy_dataset(tmp_path / "data")
    common = ["--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"),
              "--num-models", "1", "--mlp-epochs", "2", "--baseline-epochs", "2",
              "--baseline-val-every", "1"]  # fmt: skip
    result = _bench().main([*common, "--labels", "5", "--seeds", "0", "1"])
    first, second = result["rows"]
    # 5 tiles: the 4th drawn selects (early stopping and best epoch), 4 fit.
    assert len(first["train_tiles"]) == 4 and len(first["select_tiles"]) == 1
    assert first["labels"]["tiles"] == 5 and first["labels"]["pixels"] == 5 * 32 * 32
    assert first["holdout_tiles"] == [] and first["select_pixels"] > 0
    assert first["baseline_best_epoch"] in (1, 2)
    assert first["train_tiles"] != second["train_tiles"]  # seeds are label seeds
    assert result["summary"]["labels"] == first["labels"]
    assert 0.0 <= first["head_miou"] <= 1.0 and 0.0 <= first["baseline_miou"] <= 1.0
    assert "5 labeled tiles per seed (5120 px)" in capsys.readouterr().out

    small = _bench().main([*common, "--labels", "2", "--seeds", "0"])["rows"][0]
    # No select tile: the head holds out one of its 2 fit tiles, the U-Net keeps its last epoch.
    assert small["select_tiles"] == [] and len(small["holdout_tiles"]) == 1
    assert small["baseline_best_epoch"] == 2
