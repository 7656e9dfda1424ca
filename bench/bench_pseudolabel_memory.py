"""Time and peak memory of step 3 of the factory (`seg pseudolabel`) on one full-size
1270 x 10960 grain measurement.

Builds a one-measurement dataset (the first measurement of `data grains --preset full`, same
generator and seed), then runs `pairforge seg pseudolabel HEAD --data D --out OUT --filled-out
OUT2 --overlap 0 --threshold 0.4` (a fixed threshold: the head's select tiles are not in
this dataset) in a child process and reads its peak resident memory (getrusage of the
child, Linux kilobytes) and wall time. HEAD: a head fitted on the demo grains (same physical
pixel size), e.g. a factory run's seg/head-b8-s0.

    python bench/bench_pseudolabel_memory.py --head runs/factory/seg/head-b8-s0 \
        --out /tmp/pl-mem --json bench/results/bench_pseudolabel_memory.json
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


def one_full_measurement(out: Path) -> Path:
    """OUT/data: measurement m000 of the 'full' preset (seed 0), as its train split."""
    import numpy as np

    from pairforge.data.grain_surface import generate_measurement, seed_sequence
    from pairforge.data.grains import PRESETS, grains_spec
    from pairforge.data.writer import DatasetWriter

    data = out / "data"
    if (data / "dataset.yaml").exists():
        return data
    layout = PRESETS["full"]
    image, mask = generate_measurement(layout.height, layout.width, None, (*seed_sequence(0), 0))
    # Named like the demo grains: the head's budget names the dataset it was drawn on, and this
    # measurement stands in for one more (unlabeled-size) measurement of it.
    with DatasetWriter(data, grains_spec("demo-grains")) as writer:
        writer.add("m000", image, mask.astype(np.int64), split="train")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = one_full_measurement(args.out)
    for folder in ("pseudo", "filled"):
        subprocess.run(["rm", "-rf", str(args.out / folder)], check=True)
    command = [sys.executable, "-m", "pairforge.cli", "seg", "pseudolabel", str(args.head),
               "--data", str(data), "--out", str(args.out / "pseudo"), "--filled-out",
               str(args.out / "filled"), "--overlap", "0", "--threshold", "0.4"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "measurement": "1270 x 10960 px, 2 channels (intensity, depth), 3 classes",
        "head": str(args.head),
        "command": command[2:],
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "threads": os.environ.get("OMP_NUM_THREADS", "all cores"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
