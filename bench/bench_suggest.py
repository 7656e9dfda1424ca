"""Simulated labeling loop: tiles picked by `pairforge seg suggest` vs random tiles, same seeds.

Protocol (the built-in demo grains, `pairforge data grains DATA --preset demo`; labels are
revealed from their ground truth): for each seed s, the first round is the seeded budget of
`--rounds[0]` tiles (`make_budget`, tiles of the image run's crop size, split train). Random
arm: round r is the seeded budget of r tiles of the same seed (budgets of one seed are nested,
so it extends the previous round by the next random tiles). Suggested arm: the head of round r
(fitted on that round's budget) suggests the next r' - r tiles (`seg.suggest.suggest_tiles`, mean
JS + `--diversity` in pooled diffusion-feature space, seeing the dataset through a
`BudgetedDataset`: no label outside the budget is readable), appended to the budget
(`budget_from_tiles`: earlier tiles keep their fit / select parts). Every round fits a pixel-MLP
head (frozen features of the image DDPM `--image-run`, early stopping on the budget's select
tiles, ensemble seed s) and reports its mIoU on every tile of the test split (never used to
choose anything). Both arms share round 1 (the same head). Summary per round: mean +- std over
seeds and the paired difference suggested - random with a Student-t 95 % interval
(`pairforge.core.stats.paired_difference`); and the goal of issue 14: suggested at the middle
round vs random at the last (e.g. 16 suggested vs 32 random).

Not measured here: the final segmenter (distilled / supervised) on these budgets.

  OMP_NUM_THREADS=1 python bench/bench_suggest.py --data /tmp/segbench/grains \
      --image-run /tmp/segbench/run --seeds 0,1,2,3,4 --rounds 8,16,32 \
      --json bench/results/bench_suggest.json --markdown bench/results/bench_suggest.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS = ("random", "suggested")


def fit_and_score(source, dataset, budget, test, names, args, seed):
    """(head, test mIoU, fit seconds) of a head fitted on `budget` (read through its view)."""
    from pairforge.core.metrics import confusion_matrix, miou_from_confusion
    from pairforge.seg.data import budget_tile_sets
    from pairforge.seg.features import FeatureConfig
    from pairforge.seg.head import HeadSettings, fit_head

    crop, res = source.extra["crop_size"], source.extra["resolution"]
    chosen = budget_tile_sets(dataset, budget, crop, res, source.normalizer)
    fit, select = chosen.fit, chosen.select
    timesteps = tuple(int(t) for t in args.timesteps.split(","))
    start = time.perf_counter()
    head, _ = fit_head(
        source, fit.images, fit.masks, num_classes=len(names),
        settings=HeadSettings(num_models=args.num_models, max_epochs=args.mlp_epochs, seed=seed),
        feature_config=FeatureConfig(timesteps=timesteps),
        val_images=select.images if select else None,
        val_masks=select.masks if select else None,
        device=args.device, progress=False,
        info={"crop_size": crop, "resolution": res, "class_names": names,
              "normalizer": (source.normalizer or dataset.normalizer).to_dict(),
              "label_budget": budget.to_dict()},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    labels = [head.segment(test.images[i : i + 16]).labels for i in range(0, len(test.source), 16)]
    import torch

    mean, _ = miou_from_confusion(confusion_matrix(torch.cat(labels), test.masks, len(names)))
    return head, float(mean), seconds


def run_seed(source, dataset, test, names, args, seed) -> list[dict]:
    """Rows (arm, round, tiles, test mIoU, labels) of one seed, both arms."""
    from pairforge.data.budget import budget_from_tiles, make_budget
    from pairforge.data.budget_view import BudgetedDataset
    from pairforge.seg.suggest import suggest_tiles

    crop = source.extra["crop_size"]
    rounds = args.rounds
    rows = []
    first = make_budget(dataset, rounds[0], seed, crop, "train")
    head, miou, seconds = fit_and_score(source, dataset, first, test, names, args, seed)
    shared = {"round": 1, "tiles": rounds[0], "miou": miou, "fit_seconds": seconds,
              "labels": first.summary(), "picked": []}  # fmt: skip
    rows += [{"seed": seed, "arm": arm, **shared} for arm in ARMS]
    budget = first
    for index, size in enumerate(rounds[1:], start=2):
        picked = suggest_tiles(head, BudgetedDataset(dataset, budget), size - len(budget.tiles),
                               "train", args.diversity)["tiles"]  # fmt: skip
        budget = budget_from_tiles(dataset, [*budget.tiles, *picked], crop, "train", seed)
        head, miou, seconds = fit_and_score(source, dataset, budget, test, names, args, seed)
        rows.append({"seed": seed, "arm": "suggested", "round": index, "tiles": size,
                     "miou": miou, "fit_seconds": seconds, "labels": budget.summary(),
                     "picked": [list(t) for t in picked]})  # fmt: skip
        random_budget = make_budget(dataset, size, seed, crop, "train")
        _, miou, seconds = fit_and_score(source, dataset, random_budget, test, names, args, seed)
        rows.append({"seed": seed, "arm": "random", "round": index, "tiles": size, "miou": miou,
                     "fit_seconds": seconds, "labels": random_budget.summary(), "picked": []})  # fmt: skip
    for row in rows:
        print(f"seed {seed} {row['arm']:9s} {row['tiles']:3d} tiles: test mIoU {row['miou']:.4f}",
              flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict], rounds: list[int]) -> dict:
    """Per arm and budget: mean / std over seeds; paired suggested - random per budget; and
    suggested at the middle budget - random at the last (the goal)."""
    from pairforge.core.stats import paired_difference

    def by_seed(arm, tiles):
        return {r["seed"]: r["miou"] for r in rows if r["arm"] == arm and r["tiles"] == tiles}

    table = []
    for tiles in rounds:
        line = {"tiles": tiles}
        for arm in ARMS:
            values = list(by_seed(arm, tiles).values())
            line[arm] = {"mean": statistics.mean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else None}  # fmt: skip
        line["suggested_minus_random"] = paired_difference(
            by_seed("suggested", tiles), by_seed("random", tiles)
        )
        table.append(line)
    middle = rounds[len(rounds) // 2] if len(rounds) > 2 else rounds[0]
    goal = {
        "suggested_tiles": middle,
        "random_tiles": rounds[-1],
        "difference": paired_difference(
            by_seed("suggested", middle), by_seed("random", rounds[-1])
        ),
    }
    return {"rounds": table, "goal": goal}


def markdown(result: dict) -> str:
    from pairforge.core.stats import format_difference

    summary, settings = result["summary"], result["settings"]
    lines = [
        "# Suggested vs random tiles to label (test mIoU, %)",
        "",
        f"Seeds {settings['seeds']}, diversity {settings['diversity']}, image run "
        f"`{settings['image_run']}`, {settings['num_models']} MLPs, {settings['mlp_epochs']} "
        f"epochs{' (quick: numbers mean nothing)' if settings['quick'] else ''}.",
        "",
        "| labeled tiles | random | suggested | suggested - random (paired 95 % CI) |",
        "|---|---|---|---|",
    ]

    def cell(part):
        std = "" if part["std"] is None else f" +- {100 * part['std']:.1f}"
        return f"{100 * part['mean']:.1f}{std}"

    for line in summary["rounds"]:
        lines.append(f"| {line['tiles']} | {cell(line['random'])} | {cell(line['suggested'])} | "
                     f"{format_difference(line['suggested_minus_random'])} |")  # fmt: skip
    goal = summary["goal"]
    lines += ["", f"Goal: {goal['suggested_tiles']} suggested vs {goal['random_tiles']} random "
              f"tiles: {format_difference(goal['difference'])}.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="demo grains (written if missing)")
    parser.add_argument("--image-run", type=Path, required=True, help="image DDPM run (features)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", default="8,16,32", help="labeled tiles per round")
    parser.add_argument("--diversity", type=float, default=0.5)
    parser.add_argument("--num-models", type=int, default=10)
    parser.add_argument("--mlp-epochs", type=int, default=20)
    parser.add_argument("--timesteps", default="50,150,250")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="toy smoke run: 2 MLPs, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_models, args.mlp_epochs, args.timesteps = 2, 2, "50,150"
    args.rounds = [int(r) for r in args.rounds.split(",")]
    if args.rounds != sorted(set(args.rounds)) or len(args.rounds) < 2:
        parser.error(f"--rounds {args.rounds}: give at least two growing budgets, e.g. 8,16,32")
    seeds = [int(s) for s in args.seeds.split(",")]

    from pairforge.data.dataset import load_dataset
    from pairforge.seg.data import class_names, labeled_tiles
    from pairforge.seg.source import load_feature_source

    if not (args.data / "dataset.yaml").exists():
        from bench_seg import _pairforge

        _pairforge("data", "grains", str(args.data), "--preset", "demo", "--seed", "0")
    source = load_feature_source(args.image_run)
    dataset = load_dataset(args.data)
    names = class_names(args.data)
    crop, res = source.extra["crop_size"], source.extra["resolution"]
    test = labeled_tiles(args.data, "test", crop, res, source.normalizer or dataset.normalizer)
    start = time.perf_counter()
    rows = [row for seed in seeds for row in run_seed(source, dataset, test, names, args, seed)]
    result = {
        "settings": {
            "seeds": seeds,
            "rounds": args.rounds,
            "diversity": args.diversity,
            "image_run": str(args.image_run),
            "data": str(args.data),
            "num_models": args.num_models,
            "mlp_epochs": args.mlp_epochs,
            "timesteps": args.timesteps,
            "quick": args.quick,
            "test_tiles": len(test.source),
        },  # fmt: skip
        "summary": summarize(rows, args.rounds),
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    text = markdown(result)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return result


if __name__ == "__main__":
    main()
