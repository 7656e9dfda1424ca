"""bench/bench_predict.py on a toy head: the step breakdown adds up to the child's wall time,
the masks it writes are `seg predict`'s, and the overlap study pairs heads per overlap."""

import json

import numpy as np
import pytest
from bench_modules import load_bench
from PIL import Image
from test_seg_cli import _invoke, _tiny_run, _toy_dataset


@pytest.mark.usefixtures("single_thread")
def test_bench_predict_toy(tmp_path):
    _tiny_run(tmp_path / "run")
    _toy_dataset(tmp_path / "data")
    heads = []
    for seed in (0, 1):
        heads.append(tmp_path / f"head{seed}")
        _invoke(["seg", "fit", "--run", tmp_path / "run", "--data", tmp_path / "data", "--out",
                 heads[-1], "--num-models", 2, "--epochs", 2, "--timesteps", "50,150",
                 "--labels", 4, "--label-seed", seed, "--seed", seed])  # fmt: skip
    _invoke(["seg", "predict", heads[0], "--data", tmp_path / "data", "--out", tmp_path / "ref"])
    bench = load_bench("bench_predict")
    result = bench.main(["--head", str(heads[0]), "--full", str(tmp_path / "w"), "--data",
                         str(tmp_path / "data"), "--overlaps", "8,0", "--quality-data",
                         str(tmp_path / "data"), "--quality-heads", *map(str, heads),
                         "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])  # fmt: skip
    timing = {(line["path"], line["overlap"]): line for line in result["timing"]}
    assert list(timing) == [("banded", 8), ("whole", 8), ("banded", 0), ("whole", 0)]
    for line in result["timing"]:
        steps = sum(line["steps"].values()) + line["windows_other"]
        assert steps == pytest.approx(line["wall"], rel=0.05, abs=0.05)
        assert line["peak_rss_gib"] > 0.05 and line["steps"]["U-Net features"] > 0
        assert line["steps"]["stitch"] > 0
    # 5 samples of 64 x 128 at scale 2: 32 x 64 model px, 16 px windows -> 3 x 7 (overlap 8)
    # and 2 x 4 (overlap 0) windows each.
    assert timing["banded", 8]["windows"] == timing["whole", 8]["windows"] == 5 * 21
    assert timing["banded", 0]["windows"] == 5 * 8
    for sample in ("m0", "m3"):  # the bench ran seg predict's code: the same masks
        ref = np.asarray(Image.open(tmp_path / "ref" / "masks" / f"{sample}.png"))
        got = np.asarray(Image.open(tmp_path / "w" / "pred-banded-o8" / "masks" / f"{sample}.png"))
        assert np.array_equal(ref, got)
    for line in result["agreement"]:  # banded == whole up to float rounding
        assert line["identical"] == 1.0 and line["max_uncertainty_diff"] < 1e-5
        assert line["pixels"] == 5 * 64 * 128
    summary = result["quality_summary"]
    assert [line["overlap"] for line in summary] == [8, 0]
    assert summary[0]["minus_first"]["mean"] == 0 and summary[0]["changed"] == 0
    assert summary[1]["minus_first"]["n"] == 2
    assert json.loads((tmp_path / "b.json").read_text())["quality"]["split"] == "val"
    assert "| 0 |" in (tmp_path / "b.md").read_text()
