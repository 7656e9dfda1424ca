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

Final segmenter (`--final`): each round's head pseudo-labels the dataset and a U-Net is
distilled on the budget's tiles + those pseudo-labels, with the factory's settings
(`pairforge seg pseudolabel --overlap 0`, `seg distill --labels BUDGET.json --epochs 5
--pseudo-crops 1024 --weights real=1,pseudo=1,synthetic=0`, seed s), scored on the test split.
Heads, budget files and results are kept in `--work` (one folder per seed / arm / round), so an
interrupted run resumes: a finished seed's heads and a finished distillation are not redone.

  OMP_NUM_THREADS=1 python bench/bench_suggest.py --data /tmp/segbench/grains \
      --image-run /tmp/segbench/run --seeds 0,1,2,3,4 --rounds 8,16,32 \
      --work /tmp/segbench/suggest --final \
      --json bench/results/bench_suggest.json --markdown bench/results/bench_suggest.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
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
        settings=HeadSettings(num_models=args.num_models, max_epochs=args.mlp_epochs, seed=seed,
                              pixels_per_image=getattr(args, "pixels_per_image", None),
                              epochs_over_labels=getattr(args, "epochs_over_labels", True)),
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
    done = args.work / f"rows-s{seed}.json" if args.work else None
    if done is not None and done.exists():
        rows = json.loads(done.read_text())
        print(f"seed {seed}: heads done ({done})", flush=True)
        return rows
    rows = []

    def keep(head, budget, arm, tiles) -> str | None:
        """Save the head and its budget file under --work; the folder (None without --work)."""
        if args.work is None:
            return None
        folder = args.work / f"s{seed}-{arm}-{tiles}"
        head.save(folder / "head")
        (folder / "budget.json").write_text(json.dumps(budget.to_dict()))
        return str(folder)

    first = make_budget(dataset, rounds[0], seed, crop, "train")
    head, miou, seconds = fit_and_score(source, dataset, first, test, names, args, seed)
    shared = {"round": 1, "tiles": rounds[0], "miou": miou, "fit_seconds": seconds,
              "labels": first.summary(), "picked": [],
              "work": keep(head, first, "shared", rounds[0])}  # fmt: skip
    rows += [{"seed": seed, "arm": arm, **shared} for arm in ARMS]
    budget = first
    for index, size in enumerate(rounds[1:], start=2):
        picked = suggest_tiles(head, BudgetedDataset(dataset, budget), size - len(budget.tiles),
                               "train", args.diversity)["tiles"]  # fmt: skip
        budget = budget_from_tiles(dataset, [*budget.tiles, *picked], crop, "train", seed)
        head, miou, seconds = fit_and_score(source, dataset, budget, test, names, args, seed)
        rows.append({"seed": seed, "arm": "suggested", "round": index, "tiles": size,
                     "miou": miou, "fit_seconds": seconds, "labels": budget.summary(),
                     "picked": [list(t) for t in picked],
                     "work": keep(head, budget, "suggested", size)})  # fmt: skip
        random_budget = make_budget(dataset, size, seed, crop, "train")
        other, miou, seconds = fit_and_score(source, dataset, random_budget, test, names, args,
                                             seed)  # fmt: skip
        rows.append({"seed": seed, "arm": "random", "round": index, "tiles": size, "miou": miou,
                     "fit_seconds": seconds, "labels": random_budget.summary(), "picked": [],
                     "work": keep(other, random_budget, "random", size)})  # fmt: skip
    for row in rows:
        print(f"seed {seed} {row['arm']:9s} {row['tiles']:3d} tiles: test mIoU {row['miou']:.4f}",
              flush=True)  # fmt: skip
    if done is not None:
        done.write_text(json.dumps(rows))
    return rows


def distill_round(folder: Path, data: Path, seed: int, quick: bool) -> dict:
    """Test result of the segmenter distilled from the head in `folder` on its budget file
    (the factory's settings; see the module docstring). Kept as folder/distill.json."""
    result = folder / "distill.json"
    if result.exists():
        return json.loads(result.read_text())
    run = [sys.executable, "-m", "pairforge.cli"]
    epochs, crops = ("1", "16") if quick else ("5", "1024")
    subprocess.run([*run, "seg", "pseudolabel", str(folder / "head"), "--data", str(data),
                    "--out", str(folder / "pseudo"), "--overlap", "0"], check=True)  # fmt: skip
    out = subprocess.run(
        [*run, "seg", "distill", "--data", str(data), "--pseudo", str(folder / "pseudo"),
         "--labels", str(folder / "budget.json"), "--seed", str(seed), "--eval-split", "test",
         "--json", "--weights", "real=1,pseudo=1,synthetic=0", "--epochs", epochs,
         "--pseudo-crops", crops, "--out", str(folder / "distill")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    report = json.loads(out)
    result.write_text(json.dumps(report))
    return report


def add_final(rows: list[dict], args) -> None:
    """rows[i]["final_miou"]: the distilled segmenter's test mIoU (shared round: once)."""
    for row in rows:  # main() refuses --final without --work, so every row has a folder
        start = time.perf_counter()
        report = distill_round(Path(row["work"]), args.data, row["seed"], args.quick)
        if report["labels"]["fingerprint"] != row["labels"]["fingerprint"]:
            raise SystemExit(f"{row['work']}: the distillation read other labels than the head")
        row["final_miou"] = float(report["mean_iou"])
        row["final_labels"] = report["labels"]
        row["final_seconds"] = time.perf_counter() - start
        print(f"seed {row['seed']} {row['arm']:9s} {row['tiles']:3d} tiles: distilled test mIoU "
              f"{row['final_miou']:.4f}", flush=True)  # fmt: skip


def summarize(rows: list[dict], rounds: list[int], key: str = "miou") -> dict:
    """Per arm and budget: mean / std over seeds; paired suggested - random per budget; and
    suggested at the middle budget - random at the last (the goal)."""
    from pairforge.core.stats import paired_difference

    def by_seed(arm, tiles):
        return {r["seed"]: r[key] for r in rows if r["arm"] == arm and r["tiles"] == tiles}

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
    from pairforge.core.stats import format_difference, format_mean_std

    settings = result["settings"]
    lines = [
        "# Suggested vs random tiles to label (test mIoU, %)",
        "",
        f"Seeds {settings['seeds']}, diversity {settings['diversity']}, image run "
        f"`{settings['image_run']}`, {settings['num_models']} MLPs, {settings['mlp_epochs']} "
        f"epochs, {settings['test_tiles']} test tiles"
        f"{' (quick: numbers mean nothing)' if settings['quick'] else ''}.",
    ]

    parts = [("Head (pixel-MLP ensemble)", result["summary"])]
    if result.get("summary_final"):
        parts.append(("Final segmenter (distilled U-Net, factory settings; seeds "
                f"{settings.get('final_seeds') or settings['seeds']})",
                      result["summary_final"]))  # fmt: skip
    for title, summary in parts:
        lines += ["", f"## {title}", "",
                  "| labeled tiles | random | suggested | suggested - random (paired 95 % CI) |",
                  "|---|---|---|---|"]  # fmt: skip
        for line in summary["rounds"]:
            lines.append(f"| {line['tiles']} | {format_mean_std(line['random'])} | "
                         f"{format_mean_std(line['suggested'])} | "
                         f"{format_difference(line['suggested_minus_random'])} |")  # fmt: skip
        goal = summary["goal"]
        lines += ["", f"Goal: {goal['suggested_tiles']} suggested vs {goal['random_tiles']} "
                  f"random tiles: {format_difference(goal['difference'])}."]  # fmt: skip
    return "\n".join(lines) + "\n"


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
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep heads, budgets and distillations here (resumable)",
    )
    parser.add_argument(
        "--final", action="store_true", help="also distill each round's segmenter (needs --work)"
    )
    parser.add_argument("--final-seeds", default=None,
                        help="distill only for these seeds (default: every seed)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="toy smoke run: 2 MLPs, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_models, args.mlp_epochs, args.timesteps = 2, 2, "50,150"
    args.rounds = [int(r) for r in args.rounds.split(",")]
    if args.rounds != sorted(set(args.rounds)) or len(args.rounds) < 2:
        parser.error(f"--rounds {args.rounds}: give at least two growing budgets, e.g. 8,16,32")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.final and args.work is None:
        parser.error("--final needs --work (the heads and budgets are kept there)")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)

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
    if args.final:
        final = seeds if args.final_seeds is None else [int(x) for x in args.final_seeds.split(",")]
        add_final([row for row in rows if row["seed"] in final], args)
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
            "final": args.final,
            "final_seeds": args.final_seeds,
            "test_tiles": len(test.source),
        },  # fmt: skip
        "summary": summarize(rows, args.rounds),
        "summary_final": (
            summarize([r for r in rows if "final_miou" in r], args.rounds, "final_miou")
            if args.final
            else None
        ),
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    from bench_io import write_outputs

    write_outputs(result, markdown(result), args.json, args.markdown)
    return result


if __name__ == "__main__":
    main()
