"""Big label sets: a pixel head on many labeled tiles inside a RAM budget, and what pixel
sampling costs in accuracy.

Scale (`--scale`): `pairforge seg fit` on `--labels` tiles of `--crop-size` px with the feature
run `--run` (e.g. a `base`-preset U-Net), once per `--configs` entry, each in its own child
process whose peak RSS is read from the kernel (os.wait4). An entry is `all` (every labeled
pixel) or a pixel count per tile, optionally `+cache` (features memory-mapped on disk, the
`--cache` option). For each it reports the estimate pairforge makes before allocating
(`seg.pixels.estimate_feature_memory`: stored pixel features, float16, plus one working batch)
against the measured peak, and what the same pixels would need the way Baranchuk et al.'s code
holds them (float32 features of every pixel of every tile in RAM).

Accuracy (`--compare`): on a smaller budget where every pixel fits, heads fitted on every
pixel vs on `--sample` pixels per tile (same budget, same ensemble seed), the latter with
epochs counted over the labeled pixels (seg fit's default: as many optimizer steps as every
pixel) and over the stored ones (an epoch of a quarter of the pixels is a quarter pass); each
scored on every tile of the test split; paired differences over seeds with Student-t 95 %
intervals.

  python bench/bench_big_labels.py --scale --run RUN_BASE --data DATA --labels 50 \
      --crop-size 256 --resolution 128 --configs all+cache,4096 --work /tmp/big
  python bench/bench_big_labels.py --compare --run RUN_DEMO --data DATA --labels 32 \
      --sample 256 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_config(entry: str) -> tuple[int | None, bool]:
    """'all' / '4096' with an optional '+cache' -> (pixels per tile or None, on disk)."""
    name, _, extra = entry.partition("+")
    if extra not in ("", "cache"):
        raise SystemExit(f"--configs entry {entry!r}: the only suffix is +cache")
    if name == "all":
        return None, bool(extra)
    if not name.isdigit() or int(name) < 1:
        raise SystemExit(f"--configs entry {entry!r}: use 'all' or a pixel count per tile")
    return int(name), bool(extra)


def _status_kib(pid: int) -> dict[str, int]:
    """RssAnon / RssFile of a live process in KiB ({} once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (
        line.split(":") for line in text.splitlines() if line.startswith(("RssAnon", "RssFile"))
    )
    return {name: int(value.split()[0]) for name, value in fields}


def run_measured(command: list[str]) -> tuple[int, float, float, float]:
    """(exit code, peak RSS GiB, peak anonymous RSS GiB, seconds) of a child process.

    Peak RSS (os.wait4) counts the memory-mapped feature cache's resident pages, which the
    kernel drops under memory pressure; the anonymous peak (polled from /proc every 0.2 s)
    is the memory the process cannot give back."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    peak_anon = 0
    done = threading.Event()

    def poll():
        nonlocal peak_anon
        while not done.wait(0.2):
            peak_anon = max(peak_anon, _status_kib(process.pid).get("RssAnon", 0))

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    watcher.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return process.returncode, usage.ru_maxrss / 2**20, peak_anon / 2**20, seconds


def head_estimate(head_dir: Path, pixels_per_tile: int | None, on_disk: bool) -> dict:
    """pairforge's own memory estimate for the head's fit and select tiles, and the float32
    every-pixel figure, from what the head records (all grain pixels are labeled)."""
    from pairforge.seg.head import SegmentationHead
    from pairforge.seg.pixels import estimate_feature_memory

    meta = json.loads((head_dir / "head.json").read_text())
    res = meta["resolution"]
    dim = SegmentationHead.load(head_dir).extractor.feature_dim
    fit = len(meta["train_tiles"])
    select = len(meta["selection"].get("select_tiles", []))
    per_tile = res * res if pixels_per_tile is None else min(pixels_per_tile, res * res)
    parts = [
        estimate_feature_memory([per_tile] * n, dim, (res, res), 8, on_disk)
        for n in (fit, select)
        if n
    ]
    stored = sum(p.stored_bytes for p in parts)
    ram = sum(p.ram_bytes for p in parts) - sum(p.working_bytes for p in parts[1:])
    every_pixel_fp32 = (fit + select) * res * res * dim * 4
    return {
        "fit_tiles": fit,
        "select_tiles": select,
        "feature_dim": dim,
        "pixels_per_tile": per_tile,
        "num_pixels": (fit + select) * per_tile,
        "stored_gib": stored / 2**30,
        "estimate_ram_gib": ram / 2**30,
        "every_pixel_fp32_gib": every_pixel_fp32 / 2**30,
    }


def scale(args) -> list[dict]:
    rows = []
    for entry in args.configs.split(","):
        pixels, on_disk = parse_config(entry)
        name = entry.replace("+", "-")
        out = args.work / f"head-{name}"
        command = [
            sys.executable, "-m", "pairforge.cli", "seg", "fit", "--run", str(args.run),
            "--data", str(args.data), "--labels", str(args.labels), "--out", str(out),
            "--crop-size", str(args.crop_size), "--resolution", str(args.resolution),
            "--num-models", str(args.num_models), "--epochs", str(args.epochs),
            "--memory-budget-gib", str(args.memory_budget_gib),
        ]  # fmt: skip
        if pixels is not None:
            command += ["--pixels-per-image", str(pixels)]
        if on_disk:
            command += ["--cache", str(args.work / f"cache-{name}")]
        print(" ".join(command), flush=True)
        code, peak, anon, seconds = run_measured(command)
        if code != 0:
            raise SystemExit(f"seg fit for {entry} exited with {code}")
        row = {"config": entry, "on_disk": on_disk, "peak_rss_gib": peak,
               "peak_anon_rss_gib": anon, "seconds": seconds}  # fmt: skip
        row |= head_estimate(out, pixels, on_disk)
        print(
            f"{entry}: {row['num_pixels']} pixels x {row['feature_dim']} features; estimate "
            f"{row['estimate_ram_gib']:.2f} GiB RAM ({row['stored_gib']:.2f} GiB stored"
            f"{' on disk' if on_disk else ''}), measured peak RSS {peak:.2f} GiB "
            f"({anon:.2f} GiB anonymous), "
            f"{seconds:.0f} s; float32 every pixel: {row['every_pixel_fp32_gib']:.1f} GiB",
            flush=True,
        )
        rows.append(row)
    return rows


def compare(args) -> dict:
    """Test mIoU of every-pixel vs sampled heads on one budget per seed, paired."""
    import torch
    from bench_suggest import fit_and_score

    from pairforge.core.stats import paired_difference
    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset
    from pairforge.seg.data import class_names, labeled_tiles
    from pairforge.seg.source import load_feature_source

    torch.manual_seed(0)
    source = load_feature_source(args.run)
    dataset = load_dataset(args.data)
    names = class_names(args.data)
    crop, res = source.extra["crop_size"], source.extra["resolution"]
    test = labeled_tiles(args.data, "test", crop, res, source.normalizer or dataset.normalizer)
    # Sampling keeps 1/4 (say) of the pixels, so an epoch over them has 1/4 of the batches:
    # seg fit counts epochs and patience over the labeled pixels (HeadSettings.
    # epochs_over_labels); the third arm counts them over the stored pixels, as before.
    arms = {
        "every pixel": (None, True),
        f"{args.sample} per tile": (args.sample, True),
        f"{args.sample} per tile, epochs over stored pixels": (args.sample, False),
    }
    scores: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    for seed in [int(s) for s in args.seeds.split(",")]:
        budget = make_budget(dataset, args.labels, seed, crop, "train")
        for arm, (pixels, over_labels) in arms.items():
            settings = SimpleNamespace(
                num_models=args.num_models, mlp_epochs=args.epochs, timesteps=args.timesteps,
                device="cpu", pixels_per_image=pixels, epochs_over_labels=over_labels,
            )  # fmt: skip
            _, miou, seconds = fit_and_score(source, dataset, budget, test, names, settings, seed)
            scores[arm][seed] = 100 * miou
            print(f"seed {seed} {arm}: test mIoU {100 * miou:.2f} ({seconds:.0f} s)", flush=True)
    full = scores["every pixel"]
    return {
        "labels": args.labels,
        "pixels_per_tile": res * res,
        "sample": args.sample,
        "test_tiles": len(test.source),
        "miou": {
            k: {"mean": statistics.mean(v.values()), "per_seed": v} for k, v in scores.items()
        },
        "minus_every_pixel": {
            arm: paired_difference(values, full)
            for arm, values in scores.items()
            if arm != "every pixel"
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", action="store_true", help="peak memory of big label sets")
    parser.add_argument("--compare", action="store_true", help="sampled vs every-pixel mIoU")
    parser.add_argument("--run", type=Path, required=True, help="feature run (image DDPM)")
    parser.add_argument("--data", type=Path, required=True, help="labeled dataset folder")
    parser.add_argument("--labels", type=int, default=50, help="label budget (tiles)")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--configs", default="all+cache,4096")
    parser.add_argument("--memory-budget-gib", type=float, default=8.0)
    parser.add_argument("--sample", type=int, default=256, help="--compare: pixels per tile")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="--compare: budget and head seeds")
    parser.add_argument("--num-models", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--timesteps", default="50,150,250", help="--compare: feature timesteps")
    parser.add_argument("--work", type=Path, default=Path("big-labels"), help="heads and caches")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.scale or args.compare):
        parser.error("say --scale, --compare or both")
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if args.scale:
        result["scale"] = scale(args)
    if args.compare:
        result["compare"] = compare(args)
        for arm, diff in result["compare"]["minus_every_pixel"].items():
            print(f"{arm} - every pixel: {json.dumps(diff)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
