"""bench/bench_big_labels.py on a toy head: the memory estimate is the bytes the feature cache
holds on disk, peak RSS is read from each child, and the accuracy comparison pairs seeds."""

import json

import pytest
from bench_modules import load_bench
from test_seg_cli import _tiny_run, _toy_dataset


@pytest.mark.usefixtures("single_thread")
def test_bench_big_labels_toy(tmp_path):
    _tiny_run(tmp_path / "run")
    _toy_dataset(tmp_path / "data")
    bench = load_bench("bench_big_labels")
    work = tmp_path / "w"
    result = bench.main(["--scale", "--compare", "--run", str(tmp_path / "run"), "--data",
                         str(tmp_path / "data"), "--labels", "8", "--crop-size", "32",
                         "--resolution", "16", "--configs", "all+cache,64", "--sample", "64",
                         "--seeds", "0,1", "--num-models", "2", "--epochs", "2", "--timesteps",
                         "50,150", "--work", str(work), "--json", str(tmp_path / "b.json")])  # fmt: skip
    every, sampled = result["scale"]
    # 8 tiles: every 4th selects -> 6 fit + 2 select; 16 x 16 model px per tile.
    assert (every["fit_tiles"], every["select_tiles"]) == (6, 2)
    assert every["num_pixels"] == 8 * 256 and sampled["num_pixels"] == 8 * 64
    assert every["on_disk"] and not sampled["on_disk"]
    assert sampled["stored_gib"] == pytest.approx(every["stored_gib"] / 4)
    # The estimate's stored bytes are what the memory-mapped cache holds (plus .npy headers).
    cache_bytes = sum(f.stat().st_size for f in (work / "cache-all-cache").rglob("*.npy"))
    stored = every["stored_gib"] * 2**30
    assert stored <= cache_bytes <= stored + 8 * 256
    assert every["every_pixel_fp32_gib"] == pytest.approx(
        8 * 256 * every["feature_dim"] * 4 / 2**30
    )
    for row in result["scale"]:
        assert 0.05 < row["peak_rss_gib"] < 8 and row["seconds"] > 0
        assert 0.05 < row["peak_anon_rss_gib"] <= row["peak_rss_gib"] + 0.01
    assert (work / "head-64" / "head.json").is_file()
    compare = result["compare"]
    assert set(compare["miou"]) == {
        "every pixel",
        "64 per tile",
        "64 per tile, epochs over stored pixels",
    }
    for arm in compare["miou"].values():
        assert set(arm["per_seed"]) == {0, 1} and 0 <= arm["mean"] <= 100
    assert set(compare["minus_every_pixel"]) == {
        "64 per tile",
        "64 per tile, epochs over stored pixels",
    }
    assert all(diff["n"] == 2 for diff in compare["minus_every_pixel"].values())
    assert json.loads((tmp_path / "b.json").read_text())["compare"]["sample"] == 64


def test_bench_big_labels_configs():
    bench = load_bench("bench_big_labels")
    assert bench.parse_config("all+cache") == (None, True)
    assert bench.parse_config("4096") == (4096, False)
    with pytest.raises(SystemExit, match="only suffix"):
        bench.parse_config("all+disk")
    with pytest.raises(SystemExit, match="pixel count"):
        bench.parse_config("many")
