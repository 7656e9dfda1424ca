"""Does steering the factory toward the rare class help a segmenter on that class? (issue 14)

Protocol: one fraction-conditioned joint run (`model.fraction_conditioning=true`, trained on
the label budget of --budget, e.g. every labeled tile: 'all') generates --n pairs three ways, with
the same seeds and guidance: "train" (conditions drawn from the training crops' fractions,
`--fractions-from train`), "oversample" (the same draw re-weighted so the rare class is --factor x
as frequent, `--oversample CLASS=FACTOR`), and, with --unconditional, the null condition.
Each set goes through `pairforge eval downstream REAL SET --budgets BUDGET --conditions
real,mixed` (same seeds, steps and segmenter), and the rare class's test IoU of the mixed runs
is compared per seed: oversample - train (the effect of steering alone) and each - real-only,
paired 95 % t intervals (`pairforge.core.stats.paired_difference`). Also reported: each set's
mean achieved pixel fraction of the class (from the sets' manifests), so one sees that the
steering moved the data at all.

  OMP_NUM_THREADS=1 python bench/bench_oversample.py --data data/grains --joint-run runs/jf \\
      --out /tmp/oversample --class pore --factor 3 --seeds 0,1,2,3,4 \\
      --json bench/results/bench_oversample.json --markdown bench/results/bench_oversample.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import write_outputs  # noqa: E402


def pairforge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pairforge.cli", *args], check=True)


def generate(args, name: str, flags: list[str]) -> Path:
    out = args.out / "sets" / name
    pairforge("generate", "--pipeline", "joint", "--run", str(args.joint_run), "--n",
              str(args.n), "--seed", "0", "--guidance-fractions", str(args.guidance), *flags,
              *args.sample_flags, "--out", str(out))  # fmt: skip
    return out


def achieved_fraction(folder: Path, class_id: int) -> float:
    """Mean pixel fraction of `class_id` over the set's masks (read from its mask files)."""
    from pairforge.data.dataset import load_dataset

    dataset = load_dataset(folder)
    values = [float((dataset.read_mask(i) == class_id).mean()) for i in dataset.ids(None)]
    return float(np.mean(values))


def downstream(args, name: str, folder: Path) -> dict:
    out = args.out / "eval" / name
    if not (out / "downstream.json").exists():
        pairforge("eval", "downstream", str(args.data), str(folder), "--out", str(out),
                  "--budgets", args.budget, "--seeds", args.seeds, "--conditions", "real,mixed",
                  "--steps", str(args.steps))  # fmt: skip
    return json.loads((out / "downstream.json").read_text())


def per_seed(report: dict, condition: str, index: int | None = None) -> dict[int, float]:
    """{seed: test IoU of class `index`} of one condition's runs (index None: test mIoU)."""
    return {
        run["seed"]: float(run["test_miou"] if index is None else run["test_per_class_iou"][index])
        for run in report["runs"]
        if run["condition"] == condition
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="real labeled dataset")
    parser.add_argument("--joint-run", type=Path, required=True, help="fraction-conditioned")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--class", dest="cls", default="pore", help="the rare class")
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--budget", default="all", help="the joint run's label budget")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=300, help="segmenter steps per run")
    parser.add_argument("--unconditional", action="store_true")
    parser.add_argument(
        "--sample-steps", type=int, default=None, help="sampler steps (default: generate's)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    args.sample_flags = [] if args.sample_steps is None else ["--steps", str(args.sample_steps)]

    from pairforge.core.stats import format_difference, paired_difference
    from pairforge.data.dataset import load_dataset

    classes = load_dataset(args.data).spec.classes
    names, ids = [c.name for c in classes], [c.id for c in classes]
    if args.cls not in names:
        parser.error(f"--class {args.cls!r}: the dataset's classes are {', '.join(names)}")
    index = names.index(args.cls)
    start = time.perf_counter()
    sets = {
        "train": generate(args, "train", ["--fractions-from", "train"]),
        "oversample": generate(args, "oversample", ["--oversample", f"{args.cls}={args.factor:g}"]),
    }
    if args.unconditional:
        sets["unconditional"] = generate(args, "unconditional", [])
    reports = {name: downstream(args, name, folder) for name, folder in sets.items()}
    real = per_seed(reports["train"], "real", index)
    mixed = {name: per_seed(report, "mixed", index) for name, report in reports.items()}
    miou = {name: per_seed(report, "mixed") for name, report in reports.items()}
    real_miou = per_seed(reports["train"], "real")
    for name, report in reports.items():  # real-only runs are the same in every report
        if per_seed(report, "real", index) != real:
            raise SystemExit(f"the real-only runs of {name} differ from train's: not one protocol")
    result = {
        "settings": {
            **{k: str(v) for k, v in vars(args).items() if k != "sample_flags"},
            "class_index": index,
        },  # fmt: skip
        "fraction": {name: achieved_fraction(folder, ids[index]) for name, folder in sets.items()},
        "real_fraction": achieved_fraction(args.data, ids[index]),
        "class_iou": {"real": real, **mixed},
        "miou": {"real": real_miou, **miou},
        "oversample_minus_train": paired_difference(mixed["oversample"], mixed["train"]),
        "oversample_minus_train_miou": paired_difference(miou["oversample"], miou["train"]),
        "minus_real": {name: paired_difference(values, real) for name, values in mixed.items()},
        "seconds": time.perf_counter() - start,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    lines = [
        f"# Oversampling '{args.cls}' x{args.factor:g} in the factory's pairs (test IoU, %)",
        "",
        f"Joint run `{args.joint_run}` (budget {args.budget}), {args.n} pairs per set, guidance "
        f"{args.guidance:g}; `eval downstream` real vs real + synthetic, seeds {args.seeds}, "
        f"{args.steps} steps per segmenter.",
        "",
        f"| set | mean {args.cls} pixel fraction | {args.cls} IoU (mixed) | - real-only | mIoU |",
        "|---|---|---|---|---|",
        f"| real only | {100 * result['real_fraction']:.1f} % (real data) | "
        f"{100 * np.mean(list(real.values())):.1f} | | "
        f"{100 * np.mean(list(real_miou.values())):.1f} |",
    ]
    for name in sets:
        lines.append(
            f"| {name} | {100 * result['fraction'][name]:.1f} % | "
            f"{100 * np.mean(list(mixed[name].values())):.1f} | "
            f"{format_difference(result['minus_real'][name])} | "
            f"{100 * np.mean(list(miou[name].values())):.1f} |"
        )
    lines += [
        "",
        f"Oversample - train, {args.cls} IoU: "
        f"{format_difference(result['oversample_minus_train'])}; mIoU: "
        f"{format_difference(result['oversample_minus_train_miou'])}.",
        "",
    ]
    write_outputs(result, "\n".join(lines), args.json, args.markdown)
    return result


if __name__ == "__main__":
    main()
