"""Feature noise-level benchmark: which noise levels (and joint mask fills) give the best pixel head.

Protocol: the built-in demo grains (`pairforge data grains DATA --preset demo`), tiles at the
DDPM run's scale. For each feature setting (a noise-level set, and for a joint run also a
mask fill) and each seed s: draw the label budget of `--labels` tiles of the train split with
label seed s (`pairforge.data.budget.make_budget`, tiles of the run's crop size; the same tiles
for every setting), fit the pixel-MLP head on its fit tiles with early stopping on its select
tiles (every 4th drawn tile; a budget under 4 tiles has none, then a `--holdout` part of the fit
tiles, whole tiles, seeded by s), and score the select tiles (the setting is CHOSEN on them:
selection stays inside the budget; val and test labels are never read for it) and every tile of
the held-out test measurements (REPORTED only), for mean-softmax and majority-vote combining of
the same ensemble. Summary: mean and std over seeds per setting, and the paired per-seed
difference to the first setting of the same run (and mask fill), with a 95 % t confidence
interval.

Label budget: `--labels` tiles of crop_size^2 source px each (every row records
`LabelBudget.summary()` under "labels"; fit and select tiles together are all the labels a row
read). A joint run was trained on masks: its features carry its training labels too, so its
rows are not few-label results (DESIGN.md, label budgets).

Noise-level sets (`--sets`): "t:50,150,250" = those timesteps of the run's schedule (today's
default); "baranchuk" = the published levels (abar of t = 50 / 150 / 250 on the linear schedule,
t = 103 / 300 / 481 on cosine); "logsnr:4.13,2.03,0.89" = half-way in log-SNR between the two
on the cosine schedule (t = 72 / 214 / 357 there, abar 0.984 / 0.884 / 0.709); any "abar:..." / "logsnr:..." spec.

Usage (minutes on 2 CPU cores once the runs exist; the runs are trained if missing):

  python bench/bench_features.py --data /tmp/segbench/grains --run /tmp/segbench/run \
      --joint-run /tmp/segbench/joint --seeds 0 1 2 --labels 8 \
      --json /tmp/segbench/features.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_seg import mean_std, prepare  # noqa: E402

DEFAULT_SETS = ["t:50,150,250", "baranchuk", "logsnr:4.13,2.03,0.89"]
MASK_FILLS = ["zeros", "noise", "mean"]


def feature_config(spec: str, mask_fill: str = "zeros"):
    """A FeatureConfig for a set spec: "t:50,150,250" (timesteps) or a noise-levels spec."""
    from pairforge.errors import PairforgeError
    from pairforge.seg.features import FeatureConfig
    from pairforge.seg.noise_levels import parse_noise_levels

    if spec.startswith("t:"):
        try:
            steps = tuple(int(t) for t in spec[2:].split(",") if t.strip())
        except ValueError as err:
            raise PairforgeError(f"--sets {spec!r}: use t:50,150,250") from err
        return FeatureConfig(timesteps=steps, mask_fill=mask_fill)
    parse_noise_levels(spec)  # fail before any work
    return FeatureConfig(noise_levels=spec, mask_fill=mask_fill)


def paired_difference(values: list[float], reference: list[float]) -> dict:
    """Mean per-seed difference and its 95 % t interval (None with fewer than 2 seeds)."""
    diffs = [a - b for a, b in zip(values, reference, strict=True)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "ci95": None}
    from scipy.stats import t as student_t

    half = student_t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def score(head, tiles, num_classes: int) -> dict:
    """mIoU (and per-class IoU) of the head on `tiles`, for mean-softmax and majority vote."""
    import torch

    from pairforge.core.metrics import confusion_matrix, miou_from_confusion

    labels = {"mean": [], "vote": []}
    for first in range(0, len(tiles.source), 16):
        features = head.extractor.extract(tiles.images[first : first + 16], torch.float16)
        for combine in labels:
            labels[combine].append(head.ensemble.segment(features.float(), combine).labels)
    result = {}
    for combine, parts in labels.items():
        mean, per_class = miou_from_confusion(
            confusion_matrix(torch.cat(parts), tiles.masks, num_classes)
        )
        result[combine] = (mean, per_class.tolist())
    return result


def seed_budgets(source, data, seeds, labels: int) -> dict:
    """Per label seed: the budget's fit / select tiles at the run's scale (`BudgetTiles`)."""
    from pairforge.data.budget import make_budget
    from pairforge.data.dataset import load_dataset
    from pairforge.seg.data import budget_tile_sets

    crop, res = source.extra["crop_size"], source.extra["resolution"]
    dataset = load_dataset(data)
    return {
        seed: budget_tile_sets(
            dataset, make_budget(dataset, labels, seed, crop, "train"), crop, res,
            source.normalizer,
        )
        for seed in seeds
    }  # fmt: skip


def run_setting(source, budgets, test, names, spec, mask_fill, seeds, args) -> list[dict]:
    """Fit one feature setting for every seed; score it on the budget's select tiles (to
    choose) and on test (to report)."""
    from pairforge.seg.head import HeadSettings, fit_head

    rows = []
    for seed in seeds:
        chosen = budgets[seed]
        train, select = chosen.fit, chosen.select
        start = time.perf_counter()
        head, history = fit_head(
            source, train.images, train.masks, num_classes=len(names),
            settings=HeadSettings(val_fraction=args.holdout, num_models=args.num_models,
                                  max_epochs=args.mlp_epochs, seed=seed),
            feature_config=feature_config(spec, mask_fill),
            val_images=select.images if select else None,
            val_masks=select.masks if select else None,
            device=args.device, progress=False,
        )  # fmt: skip
        fit_seconds = time.perf_counter() - start
        row = {
            "run": source.task,
            "set": spec,
            "mask_fill": mask_fill if source.task == "joint" else None,
            "seed": seed,
            "labels": chosen.budget.summary(),
            "timesteps": list(head.extractor.config.timesteps),
            "abar": list(head.extractor.config.abar),
            "logsnr": list(head.extractor.config.logsnr),
            "mask_mean": head.extractor.config.mask_mean,
            "train_tiles": [list(s) for s in train.source],
            "select_tiles": [list(s) for s in select.source] if select else [],
            # Positions in train_tiles held out for early stopping (only without select tiles).
            "holdout_tiles": [] if select else history["val_images"],
            "best_epochs": [m["best_epoch"] for m in history["members"]],
            "fit_seconds": fit_seconds,
        }
        for part, tiles in (("select", select), ("test", test)):
            scores = score(head, tiles, len(names)) if tiles is not None else None
            for combine in ("mean", "vote"):
                prefix = "" if part == "test" else "select_"
                mean, per_class = scores[combine] if scores else (None, None)
                row[f"{prefix}miou_{combine}"] = mean
                row[f"{prefix}per_class_{combine}"] = per_class
        rows.append(row)
        select_text = "-" if select is None else f"{row['select_miou_mean']:.4f}"
        print(
            f"{source.task:5s} {spec:24s} fill {row['mask_fill'] or '-':5s} seed {seed}: "
            f"t {row['timesteps']} select mIoU {select_text}, test mIoU mean "
            f"{row['miou_mean']:.4f} vote {row['miou_vote']:.4f} "
            f"({len(row['train_tiles'])} fit + {len(row['select_tiles'])} select tiles, "
            f"held-out fit tiles {row['holdout_tiles']}, {fit_seconds:.1f} s)",
            flush=True,
        )
    return rows


def _mean_or_none(values: list) -> float | None:
    return None if any(v is None for v in values) else statistics.mean(values)


def _std_or_none(values: list) -> float | None:
    return None if len(values) < 2 or any(v is None for v in values) else statistics.stdev(values)


def summarize(rows: list[dict], seeds: list[int]) -> list[dict]:
    """One entry per (run, set, fill): mean +- std over seeds, paired diff to the reference."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["set"], row["mask_fill"]), []).append(row)
    summary = []
    references: dict[tuple, list[float]] = {}
    for (run, spec, fill), group in groups.items():
        by_seed = {r["seed"]: r for r in group}
        mean_values = [by_seed[s]["miou_mean"] for s in seeds]
        vote_values = [by_seed[s]["miou_vote"] for s in seeds]
        select_values = [by_seed[s]["select_miou_mean"] for s in seeds]
        # Reference: the first set of this run; for joint fills, the first set with fill zeros
        # compares fills, the same fill's first set compares sets.
        set_key = (run, fill)
        references.setdefault(set_key, mean_values)
        entry = {
            "run": run,
            "set": spec,
            "mask_fill": fill,
            "timesteps": group[0]["timesteps"],
            "abar": [round(a, 4) for a in group[0]["abar"]],
            "labels": group[0]["labels"],
            "select_miou_mean": _mean_or_none(select_values),
            "select_miou_mean_std": _std_or_none(select_values),
            "miou_mean": statistics.mean(mean_values),
            "miou_mean_std": statistics.stdev(mean_values) if len(seeds) > 1 else None,
            "miou_vote": statistics.mean(vote_values),
            "miou_vote_std": statistics.stdev(vote_values) if len(seeds) > 1 else None,
            "vote_minus_mean": paired_difference(vote_values, mean_values),
            "minus_first_set": paired_difference(mean_values, references[set_key]),
            "miou_mean_text": mean_std(mean_values),
        }
        if run == "joint":
            references.setdefault((run, "fill", spec), mean_values)
            entry["minus_first_fill"] = paired_difference(
                mean_values, references[(run, "fill", spec)]
            )
        summary.append(entry)
    return summary


def _diff_text(diff: dict | None) -> str:
    if diff is None:
        return "-"
    if diff["ci95"] is None:
        return f"{diff['mean']:+.4f}"
    low, high = diff["ci95"]
    return f"{diff['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"


def print_table(summary: list[dict]) -> None:
    header = (
        f"{'run':5s} {'set':24s} {'fill':5s} {'timesteps':16s} {'sel mIoU':8s} "
        f"{'test mIoU mean-softmax':22s} "
        f"{'vote - mean':28s} {'- first set':28s} {'- first fill':28s}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for e in summary:
        print(
            f"{e['run']:5s} {e['set']:24s} {e['mask_fill'] or '-':5s} "
            f"{','.join(map(str, e['timesteps'])):16s} "
            f"{'-' if e['select_miou_mean'] is None else format(e['select_miou_mean'], '8.4f'):8s} "
            f"{e['miou_mean_text']:22s} "
            f"{_diff_text(e['vote_minus_mean']):28s} {_diff_text(e['minus_first_set']):28s} "
            f"{_diff_text(e.get('minus_first_fill')):28s}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="demo grains dataset")
    parser.add_argument("--run", type=Path, required=True, help="image-only DDPM run")
    parser.add_argument("--joint-run", type=Path, default=None, help="joint run: compare fills")
    parser.add_argument(
        "--joint-only", action="store_true", help="skip the image run's rows (with --joint-run)"
    )
    parser.add_argument("--train-minutes", type=float, default=5.0, help="for missing runs")
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS, help="noise-level sets")
    parser.add_argument("--mask-fills", nargs="+", default=MASK_FILLS, choices=MASK_FILLS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--labels", type=int, default=8,
        help="label budget in tiles of the run's crop size (seeds = label seeds)",
    )  # fmt: skip
    parser.add_argument(
        "--holdout", type=float, default=0.25,
        help="budgets without select tiles (< 4 tiles): fraction of the fit tiles held out for "
        "early stopping (whole tiles)",
    )  # fmt: skip
    parser.add_argument("--num-models", type=int, default=10)
    parser.add_argument("--mlp-epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    # One thread: on a shared, busy 2-core machine 2-thread OpenMP stalls (several x slower).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    for spec in args.sets:
        feature_config(spec)  # bad specs stop here, before any training
    prepare(args.data, args.run, args.train_minutes, "demo-image")
    if args.joint_run is not None:
        prepare(args.data, args.joint_run, args.train_minutes, "demo-joint")

    from pairforge.seg.data import class_names, labeled_tiles
    from pairforge.seg.source import load_feature_source

    names = class_names(args.data)
    runs = [] if args.joint_only else [(load_feature_source(args.run), [None])]
    if args.joint_run is not None:
        runs.append((load_feature_source(args.joint_run), args.mask_fills))
    rows = []
    for source, fills in runs:
        crop, res = source.extra["crop_size"], source.extra["resolution"]
        budgets = seed_budgets(source, args.data, args.seeds, args.labels)
        test = labeled_tiles(args.data, "test", crop, res, source.normalizer)
        print(
            f"{source.task} run {source.path}: {crop} px crops -> {res} px, test "
            f"{len(test.source)} tiles; budget {budgets[args.seeds[0]].budget.describe()} "
            f"(per seed s: label seed s); seeds {args.seeds}",
            flush=True,
        )
        for fill in fills:
            for spec in args.sets:
                rows += run_setting(
                    source, budgets, test, names, spec, fill or "zeros", args.seeds, args
                )
    summary = summarize(rows, args.seeds)
    print_table(summary)
    # Settings are chosen on the budget's select tiles, never on val or test labels.
    for run_name in ("image", "joint"):
        group = [e for e in summary if (e["run"] == "joint") == (run_name == "joint")]
        if not group:
            continue
        if any(e["select_miou_mean"] is None for e in group):
            print(f"{run_name} run: the budget has no select tiles; no setting chosen")
            continue
        best = max(group, key=lambda e: e["select_miou_mean"])
        fill = f" fill {best['mask_fill']}" if run_name == "joint" else ""
        print(
            f"chosen on the budget's select tiles ({run_name} run): {best['set']}{fill} "
            f"(t {best['timesteps']})"
        )
    if args.joint_run is not None:
        print("note: the joint run was trained on masks; its rows are not few-label results")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "classes": names,
              "rows": rows, "summary": summary}  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
