"""Label-budget benchmark: baseline, few-label head and real + synthetic at budgets 8, 32 and all
labeled tiles of the built-in grains, >= 5 seeds, every figure with the labels it touched and a
paired 95 % interval against the baseline.

It runs the demo's protocol (`pairforge demo --seeds ...`; the demo is resumable, so a folder
that already holds a 3-seed demo only trains and evaluates the extra seeds) and stores the
few-label comparison, the downstream summary and the timings in
bench/results/bench_budgets.json, with the machine it ran on.

What varies between seeds: the budget's tiles (and which of them select), the head's and the
segmenter's initialization, and the joint generator of budgets 8 and 32 (trained per seed on
that seed's tiles). What does not: the image-only DDPM (trained once on every training image,
no mask), the 'all' generator (the same tiles at every seed), the test tiles and the steps.

    OMP_NUM_THREADS=1 python bench/bench_budgets.py --out /tmp/bench-budgets --seeds 0,1,2,3,4
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

RESULTS = Path(__file__).parent / "results" / "bench_budgets.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="demo folder (resumable)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="label-budget seeds (>= 5)")
    parser.add_argument("--budgets", default="8,32,all")
    parser.add_argument("--minutes", type=float, default=30.0, help="demo time scale")
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke run (numbers mean nothing)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--collect-only",
        action="store_true",
        help="do not run: collect a finished `pairforge demo --seeds ...` folder (its seeds and "
        "budgets must be the ones given)",
    )
    args = parser.parse_args(argv)
    if len(args.seeds.split(",")) < 5 and not args.quick:
        parser.error("--seeds: give at least 5 seeds (a paired interval needs them)")
    command = [sys.executable, "-m", "pairforge.cli", "demo", "--out", str(args.out),
               "--seeds", args.seeds, "--budgets", args.budgets,
               *(["--quick"] if args.quick else ["--minutes", str(args.minutes)])]  # fmt: skip
    start = time.perf_counter()
    if not args.collect_only:
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    few_label = json.loads((args.out / "eval" / "few-label" / "few_label.json").read_text())
    downstream = json.loads((args.out / "eval" / "downstream" / "downstream.json").read_text())
    ran_seeds = sorted(downstream["settings"]["seeds"])
    if ran_seeds != sorted(int(s) for s in args.seeds.split(",")):
        parser.error(f"{args.out} holds seeds {ran_seeds}, not --seeds {args.seeds}")
    result = {
        "bench": "budgets",
        "command": command,
        "seconds_this_invocation": round(seconds, 1),
        "collected_only": args.collect_only,
        "demo": json.loads((args.out / "demo.json").read_text()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "few_label": few_label,
        "downstream_summary": downstream.get("summary"),
        "downstream_comparisons": downstream.get("comparisons"),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2))
    table = (args.out / "eval" / "few-label" / "few_label.md").read_text()
    print(table)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
