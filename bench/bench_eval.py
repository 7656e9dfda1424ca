"""Evaluation layer at demo scale: Inception speed, FID sanity, mask statistics, downstream, report.

Builds demo-sized procedural grain measurements (real: 8 train / 1 val / 2 test of 512 x 2048 px)
and two stand-in "generated" datasets of 64 px pairs (256 px crops, area-downsampled):
  good: crops of independent measurements from the same generator (an ideal generator),
  bad:  the same crops blurred and with eroded grains (a poor generator).
FID / KID and the mask statistics must rank good before bad. Prints timings; writes an eval
folder and report.html under OUT.

    python bench/bench_eval.py --out /tmp/pairforge-bench-eval [--fid-items 64] [--steps 120]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pairforge.data.dataset import DatasetWriter
from pairforge.data.grains import generate_measurement
from pairforge.data.spec import DatasetSpec
from pairforge.data.views import downsample_image, downsample_mask, tile_image

CLASSES = [
    {"id": 0, "name": "binder", "color": [70, 70, 70]},
    {"id": 1, "name": "grain", "color": [230, 180, 40]},
    {"id": 2, "name": "pore", "color": [40, 90, 200]},
]
CHANNELS = [{"name": "intensity", "unit": "a.u."}, {"name": "depth", "unit": "um"}]


def write_real(root: Path, seed: int) -> Path:
    spec = DatasetSpec.model_validate(
        {"name": "bench-real", "channels": CHANNELS, "classes": CLASSES}
    )
    splits = ["train"] * 8 + ["val"] + ["test"] * 2
    with DatasetWriter(root, spec) as writer:
        for index, split in enumerate(splits):
            image, mask = generate_measurement(512, 2048, seed=(seed, index))
            writer.add(f"m{index:03d}", image, mask.astype(np.int64), split=split)
    return root


def write_generated(root: Path, seed: int, measurements: int, degrade: bool) -> Path:
    spec = DatasetSpec.model_validate({"name": root.name, "channels": CHANNELS, "classes": CLASSES})
    with DatasetWriter(root, spec) as writer:
        for index in range(measurements):
            image, mask = generate_measurement(512, 2048, seed=(seed, index))
            tiles, _ = tile_image(image, 256)
            mask_tiles, _ = tile_image(mask.astype(np.int64), 256)
            images = downsample_image(torch.from_numpy(tiles), 4).numpy()
            masks = downsample_mask(torch.from_numpy(mask_tiles), 4, 3).numpy()
            for tile, (pair_image, pair_mask) in enumerate(zip(images, masks, strict=True)):
                if degrade:
                    pair_image = ndimage.gaussian_filter(pair_image, (0, 1.5, 1.5))
                    grains = ndimage.binary_erosion(pair_mask == 1, iterations=2)
                    pair_mask = np.where((pair_mask == 1) & ~grains, 0, pair_mask)
                writer.add(f"g{index:03d}_{tile:02d}", pair_image, pair_mask)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/pairforge-bench-eval"))
    parser.add_argument("--fid-items", type=int, default=64)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--skip-downstream", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 on the shared 2-core machine (2 threads ran ~3-8x slower there)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    figures = {"torch_threads": torch.get_num_threads()}

    start = time.perf_counter()
    real_dir = (
        out / "real" if (out / "real" / "dataset.yaml").is_file() else write_real(out / "real", 0)
    )
    good_dir = out / "good"
    if not (good_dir / "dataset.yaml").is_file():
        write_generated(good_dir, 1, 6, degrade=False)
    bad_dir = out / "bad"
    if not (bad_dir / "dataset.yaml").is_file():
        write_generated(bad_dir, 1, 6, degrade=True)
    figures["data_seconds"] = time.perf_counter() - start

    from pairforge.eval.fid import evaluate_fid, format_fid_table
    from pairforge.eval.inception import InceptionFeatureExtractor
    from pairforge.eval.mask_stats import compare_mask_stats, plot_mask_stats
    from pairforge.eval.sets import load_eval_set

    extractor = InceptionFeatureExtractor()
    batch = torch.rand(16, 3, 64, 64)
    extractor(batch[:2])  # warm-up
    start = time.perf_counter()
    extractor(batch)
    figures["inception_seconds_per_image_64px_batch16"] = (time.perf_counter() - start) / 16

    real = load_eval_set(
        real_dir, split="train", crop_size=256, resolution=64, max_items=args.fid_items
    )  # the reference is the training split, never test (as `eval fid` does)
    results = {}
    for name, folder in (("good", good_dir), ("bad", bad_dir)):
        fake = load_eval_set(folder, normalizer=real.normalizer, max_items=args.fid_items)
        start = time.perf_counter()
        fid = evaluate_fid(real, fake, extractor=extractor, cache_dir=out / "cache", kid_subsets=50)
        figures[f"fid_{name}_seconds"] = time.perf_counter() - start
        eval_dir = out / f"eval-{name}"
        eval_dir.mkdir(exist_ok=True)
        (eval_dir / "fid.json").write_text(json.dumps(fid, indent=2))
        stats = compare_mask_stats(real, fake)
        stats["plots"] = [p.name for p in plot_mask_stats(stats, eval_dir)]
        (eval_dir / "mask_stats.json").write_text(json.dumps(stats, indent=2))
        results[name] = (fid, stats)
        print(
            f"== {name} generator ({fid['fake']['n_images']} pairs vs {fid['real']['n_images']} real tiles)"
        )
        print(format_fid_table(fid))
        print("fraction L1", round(stats["summary"]["fraction_l1"], 4), "mean size W1",
              round(stats["summary"]["mean_size_wasserstein"], 2))  # fmt: skip

    if not args.skip_downstream:
        from pairforge.eval.downstream import DownstreamConfig, run_downstream, write_downstream

        config = DownstreamConfig(budgets=[8, 32], seeds=[0, 1, 2], steps=args.steps,
                                  crop_size=256, resolution=64)  # fmt: skip
        start = time.perf_counter()
        downstream = run_downstream(real_dir, good_dir, config)
        figures["downstream_seconds"] = time.perf_counter() - start
        write_downstream(downstream, out / "eval-good")
        print((out / "eval-good" / "downstream.md").read_text())

    from pairforge.eval.report import build_report

    start = time.perf_counter()
    report = build_report([out / "eval-good", good_dir], out / "report.html", title="bench eval")
    figures["report_seconds"] = time.perf_counter() - start
    figures["report_bytes"] = report.stat().st_size
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
