"""bench/bench_features.py runs end to end on a tiny image run and a tiny joint run (1 seed)."""

import json

import pytest
import torch
from bench_modules import load_bench
from test_seg_cli import SPEC, _tiny_run, _toy_dataset

from pairforge.data.codec import MaskCodec
from pairforge.data.normalize import ChannelNormalizer
from pairforge.diffusion.schedule import make_scheduler_config
from pairforge.errors import PairforgeError
from pairforge.models.factory import build_model


def _bench():
    return load_bench("bench_features")


def _tiny_joint_run(run_dir):
    from pairforge.train.run import write_inference_model

    torch.manual_seed(1)
    codec = MaskCodec(2, "onehot")
    model = build_model("UNet2DModel", "tiny", 4, 4, 16)
    info = {
        "model_class": "UNet2DModel",
        "task": "joint",
        "normalizer": ChannelNormalizer(low=[0.0, -10.0], high=[1.0, 10.0]).to_dict(),
        "codec": codec.to_dict(),
        "spec": SPEC.model_dump(mode="json"),
        "resolution": 16,
        "crop_size": 32,
        "image_channels": 2,
        "sample_channels": 4,
        "num_classes": 2,
    }
    write_inference_model(run_dir, model, make_scheduler_config(), info)


def test_bench_features_compares_sets_and_fills(tmp_path, capsys):
    _tiny_run(tmp_path / "run")
    _tiny_joint_run(tmp_path / "joint")
    _toy_dataset(tmp_path / "data")
    bench = _bench()
    result = bench.main([
        "--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"),
        "--joint-run", str(tmp_path / "joint"), "--seeds", "0", "--labels", "4",
        "--sets", "t:50,150", "baranchuk", "--mask-fills", "zeros", "mean",
        "--num-models", "2", "--mlp-epochs", "2", "--json", str(tmp_path / "out.json"),
    ])  # fmt: skip
    assert json.loads((tmp_path / "out.json").read_text())["summary"] == json.loads(
        json.dumps(result["summary"])
    )
    rows = result["rows"]
    keys = [(r["run"], r["set"], r["mask_fill"]) for r in rows]
    assert keys == [
        ("image", "t:50,150", None), ("image", "baranchuk", None),
        ("joint", "t:50,150", "zeros"), ("joint", "baranchuk", "zeros"),
        ("joint", "t:50,150", "mean"), ("joint", "baranchuk", "mean"),
    ]  # fmt: skip
    # The tiny runs use the linear schedule, where the published levels are t = 50, 150, 250.
    assert rows[1]["timesteps"] == [50, 150, 250]
    assert [round(a, 3) for a in rows[1]["abar"]] == [0.970, 0.786, 0.521]
    for row in rows:
        # Selection inside the label budget: of its 4 tiles the 4th drawn selects, 3 fit.
        assert len(row["train_tiles"]) == 3 and len(row["select_tiles"]) == 1
        assert row["holdout_tiles"] == []
        assert row["labels"]["tiles"] == 4 and row["labels"]["pixels"] == 4 * 32 * 32
        assert 0.0 <= row["miou_mean"] <= 1.0 and 0.0 <= row["miou_vote"] <= 1.0
        assert 0.0 <= row["select_miou_mean"] <= 1.0
    # Same seed -> the same labeled tiles for every setting (paired comparison).
    assert all(r["train_tiles"] == rows[0]["train_tiles"] for r in rows)
    mean_row = rows[4]
    assert mean_row["mask_mean"] is not None and len(mean_row["mask_mean"]) == 2
    assert sum(mean_row["mask_mean"]) == pytest.approx(0.0)  # one-hot 2 classes: 2p-1 each
    summary = {(e["run"], e["set"], e["mask_fill"]): e for e in result["summary"]}
    reference = summary[("joint", "t:50,150", "zeros")]
    assert reference["minus_first_set"]["mean"] == 0.0
    assert summary[("joint", "baranchuk", "mean")]["minus_first_fill"]["mean"] == pytest.approx(
        rows[5]["miou_mean"] - rows[3]["miou_mean"]
    )
    out = capsys.readouterr().out
    assert "vote - mean" in out and "not few-label results" in out
    assert "chosen on the budget's select tiles (image run)" in out


def test_bench_features_rejects_a_bad_set_before_any_work(tmp_path):
    with pytest.raises(PairforgeError, match="unknown form"):
        _bench().main(["--data", str(tmp_path / "nope"), "--run", str(tmp_path / "nope"),
                       "--sets", "sigma:0.1"])  # fmt: skip
    assert not (tmp_path / "nope").exists()


def test_bench_features_small_budget_holds_out_fit_tiles(tmp_path, capsys):
    _tiny_run(tmp_path / "run")
    _toy_dataset(tmp_path / "data")
    result = _bench().main([
        "--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"), "--seeds", "0", "1",
        "--labels", "2", "--sets", "t:50", "--num-models", "1", "--mlp-epochs", "1",
    ])  # fmt: skip
    first, second = result["rows"]
    # 2 tiles: no select tile, so early stopping holds out 1 of the 2 fit tiles.
    assert len(first["train_tiles"]) == 2 and first["select_tiles"] == []
    assert len(first["holdout_tiles"]) == 1 and first["select_miou_mean"] is None
    assert first["train_tiles"] != second["train_tiles"]  # seeds are label seeds
    assert result["summary"][0]["select_miou_mean"] is None
    assert "no setting chosen" in capsys.readouterr().out
