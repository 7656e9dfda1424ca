"""Where the time of whole-measurement prediction goes (`pairforge seg predict`), and what the
sliding-window overlap buys (issue 15).

Timing: `seg predict`'s own code path (`pairforge.seg.commands.predict_to_folder`) on one
full-size 1270 x 10960 grain measurement (`bench_pseudolabel_memory.one_full_measurement`), each
run in a fresh child process (its peak RSS is the child's getrusage), with timers wrapped around
the steps: reading the image, normalizing + area-downsampling, the U-Net features (3 noise
levels, bilinear upsampling of the block outputs to the window), the pixel MLPs, stitching
(Hann blending), the full-resolution bilinear upsampling + argmax + entropies, and writing the
PNG / TIFF. Runs of the overlaps are interleaved (--repeats rounds of every overlap).

Quality of each overlap: the full-resolution masks of every labeled measurement of
`--quality-split` (default val: a choice is made on it, never on test) against their ground
truth, for each head of `--quality-heads` (e.g. the 5 seeds of a factory run), mIoU paired per
head against the default overlap (window // 2) with Student-t 95 % intervals, plus the fraction
of pixels whose label changes.

  OMP_NUM_THREADS=2 python bench/bench_predict.py --head runs/factory/seg/head-b8-s0 \\
      --full /tmp/predict-full --quality-data data/grains \\
      --quality-heads runs/factory/seg/head-b8-s{0,1,2,3,4} \\
      --json bench/results/bench_predict.json --markdown bench/results/bench_predict.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = ("read", "normalize+downsample", "U-Net features", "pixel MLPs", "stitch",
         "full-res upsample+argmax", "write")  # fmt: skip


def _whole_predict(head, items, out, uncertainty, overlap=None, echo=print):
    """`seg predict` before banding (kept for the comparison): segment_measurement's K + 2
    full-resolution maps at once, then the same files as predict_to_folder."""
    import numpy as np
    import tifffile
    from PIL import Image

    from pairforge.seg.ensemble import image_scores
    from pairforge.seg.sliding import segment_measurement

    for folder in ("masks", "uncertainty"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for sample_id, read in items:
        result = segment_measurement(head, read(), overlap=overlap)
        maps = result.uncertainty(uncertainty)
        Image.fromarray(result.mask.numpy().astype(np.uint8)).save(
            out / "masks" / f"{sample_id}.png"
        )
        tifffile.imwrite(out / "uncertainty" / f"{sample_id}.tif", maps.numpy().astype(np.float32))
        echo(f"{sample_id}: score {float(image_scores(maps[None])[0]):.4f}")


def child(head_dir: Path, data: Path, overlap: int | None, out: Path, path: str) -> dict:
    """Run predict_to_folder (path "banded", today's seg predict) or `_whole_predict` ("whole")
    on `data` with timers around each step; the breakdown (s)."""
    import pairforge.data.views as views
    import pairforge.seg.sliding as sliding
    from pairforge.data.normalize import ChannelNormalizer
    from pairforge.seg.commands import predict_to_folder
    from pairforge.seg.data import measurements
    from pairforge.seg.head import SegmentationHead

    seconds = dict.fromkeys(STEPS, 0.0)
    clock = {"sliding": 0.0, "segment": 0.0}

    def timed(step, function, into=seconds):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into[step] += time.perf_counter() - start

        return wrapper

    head = SegmentationHead.load(head_dir)
    head.extractor.extract = timed("U-Net features", head.extractor.extract)
    head.ensemble.segment = timed("pixel MLPs", head.ensemble.segment)
    views.TileStitcher.add = timed("stitch", views.TileStitcher.add)
    views.TileStitcher.result = timed("stitch", views.TileStitcher.result)
    views.downsample_image = timed("normalize+downsample", views.downsample_image)
    ChannelNormalizer.encode = timed("normalize+downsample", ChannelNormalizer.encode)
    windows = []
    coords = sliding.tile_coords

    def counted(*args, **kwargs):
        found = coords(*args, **kwargs)
        windows.append(len(found))
        return found

    sliding.tile_coords = counted
    sliding.segment_sliding = timed("sliding", sliding.segment_sliding, clock)
    name = "segment_measurement_maps" if path == "banded" else "segment_measurement"
    setattr(sliding, name, timed("segment", getattr(sliding, name), clock))
    items = [(i, timed("read", read)) for i, read in measurements(data, None, None)]
    run = predict_to_folder if path == "banded" else _whole_predict
    start = time.perf_counter()
    run(head, items, out, "js", overlap=overlap, echo=lambda _: None)
    wall = time.perf_counter() - start
    # segment_measurement(_maps) outside the windows: normalize + downsample (timed) and the
    # full-resolution maps; predict_to_folder outside it: reading and writing.
    seconds["full-res upsample+argmax"] = (
        clock["segment"] - clock["sliding"] - seconds["normalize+downsample"]
    )
    other = clock["sliding"] - seconds["U-Net features"] - seconds["pixel MLPs"] - seconds["stitch"]
    seconds["write"] = wall - clock["segment"] - seconds["read"]
    return {"wall": wall, "steps": seconds, "windows": sum(windows), "path": path,
            "windows_other": other,  # cutting windows out, padding: the rest of the loop
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # fmt: skip


def run_child(args, path: str, overlap: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--head", str(args.head), "--full",
               str(args.full), "--data", str(args.data), "--overlap", str(overlap),
               "--child-out", str(out), "--paths", path]  # fmt: skip
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(text.strip().splitlines()[-1])


def agree(folder: Path, overlap: int) -> dict:
    """Banded vs whole outputs of one overlap: identical mask pixels, largest uncertainty gap."""
    import numpy as np
    import tifffile
    from PIL import Image

    same = pixels = 0
    gap = 0.0
    for png in sorted((folder / f"pred-banded-o{overlap}" / "masks").glob("*.png")):
        other = folder / f"pred-whole-o{overlap}"
        a, b = np.asarray(Image.open(png)), np.asarray(Image.open(other / "masks" / png.name))
        same, pixels = same + int((a == b).sum()), pixels + a.size
        tif = f"uncertainty/{png.stem}.tif"
        u = tifffile.imread(png.parent.parent / tif) - tifffile.imread(other / tif)
        gap = max(gap, float(np.abs(u).max()))
    return {"overlap": overlap, "identical": same / pixels, "pixels": pixels,
            "max_uncertainty_diff": gap}  # fmt: skip


def quality(heads: list[Path], data: Path, split: str, overlaps: list[int]) -> dict:
    """Full-resolution mIoU per (head, overlap) on the labeled measurements of `split`."""
    import numpy as np

    from pairforge.core.metrics import confusion_matrix, miou_from_confusion
    from pairforge.data.dataset import load_dataset
    from pairforge.seg.head import SegmentationHead
    from pairforge.seg.sliding import segment_measurement

    dataset = load_dataset(data)
    ids = [i for i in dataset.ids(split) if dataset.has_mask(i)]
    rows = []
    for head_dir in heads:
        head = SegmentationHead.load(head_dir)
        masks = {}
        for overlap in overlaps:
            confusion = np.zeros((head.num_classes, head.num_classes), np.int64)
            labels = []
            for sample_id in ids:
                image, truth = dataset.read_pair(sample_id)
                result = segment_measurement(head, image, overlap=overlap)
                labels.append(result.mask)
                confusion += confusion_matrix(result.mask.numpy(), truth, head.num_classes)
            masks[overlap] = labels
            mean, per_class = miou_from_confusion(confusion)
            changed = sum(int((a != b).sum()) for a, b in zip(labels, masks[overlaps[0]],
                                                               strict=True))  # fmt: skip
            pixels = sum(int(a.numel()) for a in labels)
            rows.append({"head": str(head_dir), "overlap": overlap, "miou": float(mean),
                         "per_class": [float(v) for v in per_class],
                         "changed_vs_first": changed / pixels})  # fmt: skip
            print(f"{head_dir} overlap {overlap}: {split} mIoU {mean:.4f}, "
                  f"{100 * changed / pixels:.2f} % px changed", flush=True)  # fmt: skip
    return {"split": split, "measurements": ids, "rows": rows}


def summarize_quality(result: dict, overlaps: list[int]) -> list[dict]:
    from pairforge.core.stats import paired_difference

    def by_head(overlap):
        return {r["head"]: r["miou"] for r in result["rows"] if r["overlap"] == overlap}

    out = []
    for overlap in overlaps:
        values = list(by_head(overlap).values())
        changed = [r["changed_vs_first"] for r in result["rows"] if r["overlap"] == overlap]
        out.append({"overlap": overlap, "mean": sum(values) / len(values),
                    "minus_first": paired_difference(by_head(overlap), by_head(overlaps[0])),
                    "changed": sum(changed) / len(changed)})  # fmt: skip
    return out


def markdown(result: dict) -> str:
    from pairforge.core.stats import format_difference

    lines = ["# Whole-measurement prediction (`seg predict`)", "",
             f"Timing on {result['data']}: {result['machine']}, {result['threads']} threads; "
             f"median of {result['repeats']} interleaved runs per overlap; peak RSS of the "
             "child process.", "",
             "| code path | overlap (model px) | windows | wall (s) | " + " | ".join(STEPS) +
             " | peak RSS (GiB) |", "|---" * (len(STEPS) + 5) + "|"]  # fmt: skip
    if not result["timing"]:
        lines = lines[:2]  # no timing asked for (--no-timing)
    for line in result["timing"]:
        steps = " | ".join(f"{line['steps'][s]:.1f}" for s in STEPS)
        lines.append(f"| {line['path']} | {line['overlap']} | {line['windows']} | "
                     f"{line['wall']:.1f} | {steps} | {line['peak_rss_gib']:.2f} |")  # fmt: skip
    for line in result.get("agreement", []):
        lines.append(f"\nOverlap {line['overlap']}: banded vs whole masks identical on "
                     f"{100 * line['identical']:.4f} % of {line['pixels']} px; uncertainty max "
                     f"|diff| {line['max_uncertainty_diff']:.2e}.")  # fmt: skip
    if result.get("quality"):
        q = result["quality"]
        lines += ["", f"## Full-resolution mIoU by overlap ({q['split']} split: "
                  f"{', '.join(q['measurements'])}; {len(result['quality_heads'])} heads)", "",
                  "| overlap | mIoU (%) | - default overlap (paired 95 % CI) | px changed |",
                  "|---|---|---|---|"]  # fmt: skip
        for line in result["quality_summary"]:
            lines.append(f"| {line['overlap']} | {100 * line['mean']:.2f} | "
                         f"{format_difference(line['minus_first'])} | "
                         f"{100 * line['changed']:.2f} % |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head", type=Path, required=True, help="head timed on --full")
    parser.add_argument("--full", type=Path, required=True,
                        help="work folder: FULL/data is the full-size measurement (made if missing)")  # fmt: skip
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="time on this dataset instead of FULL/data (e.g. a toy one)",
    )
    parser.add_argument("--overlaps", default="16,8,0", help="first = the default (window // 2)")
    parser.add_argument("--paths", default="banded,whole",
                        help="banded: seg predict today; whole: K + 2 full-size maps at once")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quality-data", type=Path, default=None)
    parser.add_argument("--quality-split", default="val")
    parser.add_argument("--quality-heads", type=Path, nargs="*", default=[])
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.head, args.data, args.overlap, args.child_out, args.paths)))
        return None
    from bench_pseudolabel_memory import one_full_measurement

    overlaps = [int(o) for o in args.overlaps.split(",")]
    if args.data is None:
        args.data = one_full_measurement(args.full)
    timing, agreement = [], []
    if not args.no_timing:
        paths = args.paths.split(",")
        variants = [(path, overlap) for overlap in overlaps for path in paths]
        runs: dict[tuple, list] = {v: [] for v in variants}
        for rep in range(args.repeats):
            for path, overlap in variants if rep % 2 == 0 else variants[::-1]:
                run = run_child(args, path, overlap, args.full / f"pred-{path}-o{overlap}")
                print(f"{path} overlap {overlap}: {run['wall']:.1f} s, "
                      f"{run['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
                runs[path, overlap].append(run)
        for variant in variants:
            ordered = sorted(runs[variant], key=lambda r: r["wall"])
            middle = ordered[len(ordered) // 2]
            timing.append({"overlap": variant[1], **middle,
                           "walls": [r["wall"] for r in runs[variant]]})  # fmt: skip
        if {"banded", "whole"} <= set(paths):
            agreement = [agree(args.full, overlap) for overlap in overlaps]
    result = {
        "timing": timing,
        "agreement": agreement,
        "repeats": args.repeats,
        "head": str(args.head),
        "data": str(args.data),
        "threads": os.environ.get("OMP_NUM_THREADS", "all cores"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "quality_heads": [str(h) for h in args.quality_heads],
    }
    if args.quality_heads:
        result["quality"] = quality(args.quality_heads, args.quality_data, args.quality_split,
                                    overlaps)  # fmt: skip
        result["quality_summary"] = summarize_quality(result["quality"], overlaps)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return result


if __name__ == "__main__":
    main()
