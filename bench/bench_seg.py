"""Few-label segmentation benchmark: diffusion-feature head vs supervised U-Net on demo grains.

Protocol: the built-in demo grains (`pairforge data grains DATA --preset demo`), tiles at the
DDPM run's scale (crop_size px downsampled to resolution px). For each seed s: draw the label
budget of `--labels` tiles of the train split with label seed s
(`pairforge.data.budget.make_budget`, tiles of the run's crop size); fit the pixel-MLP head on
the run's features of its fit tiles (early stopping on its select tiles, every 4th drawn) and
train the supervised smp U-Net on the same fit tiles (best epoch on the same select tiles; a
budget under 4 tiles has none: the head holds out a part of its fit tiles, the U-Net keeps its
last epoch); report mIoU on every tile of the held-out test measurements. No val label is read.
Every row records the budget ("labels": tiles and pixels). The two methods run interleaved per
seed (shared machine). Also reported: feature extraction and MLP training time, the process
peak RSS after each phase (and its growth while the seed-independent test features are
computed), and the size of the stored float16 pixel features. Torch runs on one thread by default: on the shared,
busy 2-core machine 2-thread OpenMP stalls.

Usage (a few minutes on 2 CPU cores once a run exists):

  python bench/bench_seg.py --data /tmp/segbench/grains --run /tmp/segbench/run \
      --train-minutes 12 --seeds 0 1 2 --memory-images 100 --json /tmp/segbench/result.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


class PeakRSS:
    """Context manager: peak resident memory growth (bytes) of this process while inside."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_growth = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_growth = max(self.peak_growth, self._rss() - self.start)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_growth = max(self.peak_growth, self._rss() - self.start)


def peak_rss() -> int:
    """Peak resident memory of this process so far, bytes (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _pairforge(*args: str) -> None:
    command = [sys.executable, "-m", "pairforge.cli", *args]
    print("+", " ".join(command), flush=True)
    # One OpenMP thread: 2-thread OpenMP stalls when the shared cores are busy.
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def prepare(data: Path, run: Path, train_minutes: float, config: str) -> None:
    """Write the demo grains and train a short DDPM run unless they exist."""
    if not (data / "dataset.yaml").exists():
        _pairforge("data", "grains", str(data), "--preset", "demo", "--seed", "0")
    if not (run / "model" / "pairforge.json").exists():
        _pairforge(
            "train", config, "--out", str(run),
            "--set", f"data.path={data}",
            "--set", f"optim.max_minutes={train_minutes}",
        )  # fmt: skip


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def memory_check(extractor, num_images: int, size: int = 64) -> dict:
    """Every pixel of `num_images` random (C, size, size) images: estimate vs allocated vs RSS."""
    import torch

    from pairforge.seg.pixels import extract_pixel_features

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(num_images, extractor.image_channels, size, size, generator=generator)
    masks = torch.randint(0, 2, (num_images, size, size), generator=generator)
    start = time.perf_counter()
    with PeakRSS() as memory:
        pixels = extract_pixel_features(extractor, images, masks, progress=False)
    return {
        "memory_images": num_images,
        "memory_image_px": size,
        "memory_estimate_ram_mib": pixels.estimate.ram_bytes / 2**20,
        "memory_stored_estimate_mib": pixels.estimate.stored_bytes / 2**20,
        "memory_allocated_mib": pixels.allocated_bytes / 2**20,
        "memory_peak_rss_growth_mib": memory.peak_growth / 2**20,
        "memory_extract_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/segbench/grains"))
    parser.add_argument("--run", type=Path, default=Path("/tmp/segbench/run"))
    parser.add_argument("--config", default="demo-image", help="training preset for --run")
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--labels", type=int, default=8,
        help="label budget in tiles of the run's crop size (seeds = label seeds)",
    )  # fmt: skip
    parser.add_argument("--num-models", type=int, default=10)
    parser.add_argument("--mlp-epochs", type=int, default=20)
    parser.add_argument("--select-pixels-per-tile", type=int, default=256)
    parser.add_argument("--baseline-epochs", type=int, default=600)
    parser.add_argument("--baseline-val-every", type=int, default=10)
    # One thread: on a shared, busy 2-core machine 2-thread OpenMP stalls (several x slower).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--memory-images", type=int, default=0,
        help="also extract every pixel of this many random 64 px images and report the memory",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    prepare(args.data, args.run, args.train_minutes, args.config)

    from pairforge.core.metrics import confusion_matrix, miou_from_confusion
    from pairforge.core.supervised import predict_supervised, train_supervised
    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset
    from pairforge.seg.data import budget_tile_sets, class_names, labeled_tiles
    from pairforge.seg.ensemble_training import EnsembleSettings, train_ensemble
    from pairforge.seg.features import DiffusionFeatureExtractor
    from pairforge.seg.pixels import extract_pixel_features
    from pairforge.seg.source import load_feature_source

    source = load_feature_source(args.run)
    crop, res = source.extra["crop_size"], source.extra["resolution"]
    names = class_names(args.data)
    extractor = DiffusionFeatureExtractor(
        source.model, source.scheduler_config, image_channels=source.image_channels
    )
    # First, while the process is fresh, so RSS growth reflects this phase alone.
    summary_memory = memory_check(extractor, args.memory_images) if args.memory_images else {}
    if summary_memory:
        print(f"memory check: {summary_memory}", flush=True)
    test = labeled_tiles(args.data, "test", crop, res, source.normalizer)
    print(
        f"run {args.run} ({source.task}, {crop} px crops -> {res} px, {extractor.feature_dim} "
        f"features from {extractor.feature_names}); test {len(test.source)} tiles; classes "
        f"{names}; torch threads {args.threads}",
        flush=True,
    )

    # Test feature maps do not depend on the seed: once.
    start = time.perf_counter()
    with PeakRSS() as shared_memory:
        test_features = torch.cat(
            [extractor.extract(test.images[i : i + 16], torch.float16)
             for i in range(0, len(test.source), 16)]
        )  # fmt: skip
    shared = {
        "test_feature_seconds": time.perf_counter() - start,
        "test_peak_rss_growth_bytes": shared_memory.peak_growth,
        "test_feature_bytes": test_features.numel() * test_features.element_size(),
    }
    shared["peak_rss_after_shared_bytes"] = peak_rss()
    print(f"shared features: {shared}", flush=True)
    dataset = load_dataset(args.data)

    def test_iou(prediction) -> tuple[float, list[float]]:
        mean, per_class = miou_from_confusion(confusion_matrix(prediction, test.masks, len(names)))
        return mean, per_class.tolist()

    rows = []
    for seed in args.seeds:
        budget = make_budget(dataset, args.labels, seed, crop, "train")
        chosen = budget_tile_sets(dataset, budget, crop, res, source.normalizer)
        train, select = chosen.fit, chosen.select
        row: dict = {
            "seed": seed,
            "labels": budget.summary(),
            "train_tiles": [list(s) for s in train.source],
            "select_tiles": [list(s) for s in select.source] if select else [],
        }
        select_pixels = None
        if select is not None:
            select_pixels = extract_pixel_features(
                extractor, select.images, select.masks,
                pixels_per_image=args.select_pixels_per_tile, progress=False,
            )  # fmt: skip
            row["select_pixels"] = select_pixels.estimate.num_pixels

        # Diffusion-feature head: features of the labeled tiles, then the MLP ensemble.
        start = time.perf_counter()
        train_pixels = extract_pixel_features(extractor, train.images, train.masks, progress=False)
        row["feature_seconds"] = time.perf_counter() - start
        row["peak_rss_after_features_bytes"] = peak_rss()
        ensemble, history = train_ensemble(
            train_pixels, len(names),
            EnsembleSettings(num_models=args.num_models, max_epochs=args.mlp_epochs, seed=seed),
            val_pixels=select_pixels, progress=False,
        )  # fmt: skip
        row["peak_rss_after_mlp_bytes"] = peak_rss()
        start = time.perf_counter()
        head_prediction = torch.cat(
            [ensemble.segment(test_features[i : i + 16].float()).labels
             for i in range(0, len(test.source), 16)]
        )  # fmt: skip
        row["head_predict_seconds"] = time.perf_counter() - start
        row["head_miou"], row["head_per_class"] = test_iou(head_prediction)
        row.update(
            mlp_seconds=history["seconds"],
            train_feature_bytes=train_pixels.allocated_bytes,
            train_feature_bytes_estimate=train_pixels.estimate.stored_bytes,
            train_pixels=train_pixels.estimate.num_pixels,
            mlp_best_epochs=[m["best_epoch"] for m in history["members"]],
            # Positions in train_tiles held out for early stopping (only without select tiles).
            holdout_tiles=[] if select is not None else history["val_images"],
        )

        # Supervised baseline on the same fit tiles, best epoch on the same select tiles.
        start = time.perf_counter()
        with PeakRSS() as baseline_memory:
            model, baseline_history = train_supervised(
                train.images, train.masks, select.images if select else None,
                select.masks if select else None, num_classes=len(names),
                epochs=args.baseline_epochs, seed=seed, val_every=args.baseline_val_every,
                progress=False,
            )  # fmt: skip
        row["baseline_seconds"] = time.perf_counter() - start
        row["baseline_peak_rss_growth_bytes"] = baseline_memory.peak_growth
        row["baseline_best_epoch"] = baseline_history["best_epoch"]
        row["baseline_miou"], row["baseline_per_class"] = test_iou(
            predict_supervised(model, test.images, batch_size=32)
        )
        rows.append(row)
        print(
            f"seed {seed}: head mIoU {row['head_miou']:.4f} (features {row['feature_seconds']:.1f} "
            f"s, MLPs {row['mlp_seconds']:.1f} s, best epochs {row['mlp_best_epochs']}) | "
            f"baseline mIoU {row['baseline_miou']:.4f} ({row['baseline_seconds']:.1f} s, best "
            f"epoch {row['baseline_best_epoch']})",
            flush=True,
        )

    def per_class_mean(key: str) -> list[float]:
        return [statistics.mean(r[key][k] for r in rows) for k in range(len(names))]

    summary = {
        "labels": rows[0]["labels"],
        "head_miou": mean_std([r["head_miou"] for r in rows]),
        "baseline_miou": mean_std([r["baseline_miou"] for r in rows]),
        "head_per_class_mean": per_class_mean("head_per_class"),
        "baseline_per_class_mean": per_class_mean("baseline_per_class"),
        "train_feature_seconds": mean_std([r["feature_seconds"] for r in rows]),
        "mlp_seconds": mean_std([r["mlp_seconds"] for r in rows]),
        "baseline_seconds": mean_std([r["baseline_seconds"] for r in rows]),
        "process_peak_rss_after_head_mib": max(r["peak_rss_after_mlp_bytes"] for r in rows) / 2**20,
        "process_peak_rss_end_mib": peak_rss() / 2**20,
        "train_feature_mib": rows[0]["train_feature_bytes"] / 2**20,
        **shared,
        **summary_memory,
    }
    print(f"\nclasses {names}; {rows[0]['labels']['tiles']} labeled tiles per seed "
          f"({rows[0]['labels']['pixels']} px); label seeds {args.seeds}")  # fmt: skip
    for key, value in summary.items():
        print(f"  {key}: {value}")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "classes": names,
              "rows": rows, "summary": summary}  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
