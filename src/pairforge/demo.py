"""`pairforge demo`: the whole pipeline on the built-in grain measurements, ending in a report.

The demo is a list of ordinary `pairforge` commands, printed before each runs so they can be
copied and rerun by hand: data -> image-only, joint, mask and SDM training -> pair generation
(joint and two-stage) -> diffusion-feature segmentation head vs a supervised baseline -> FID,
mask statistics and the downstream experiment -> report.html. Every step resumes: rerunning the
demo into the same folder skips finished work.

The image-only DDPM (`runs/image`) is the neutral network of the demo: the few-label head reads
its features (a DDPM trained on masks would leak its labels into them) and the domain-feature
FID row of both pipelines uses it (the joint model's own features would favour joint samples).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import typer

from pairforge.chain import (
    DEMO_CONFIGS,
    QUICK_TRAIN_OVERRIDES,
    Stage,
    budget_text,
    parse_list,
    stage_runner,
    tag,
    train_stage,
)
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text


@dataclass
class DemoPlan:
    """Sizes of one demo run. `full()` targets ~30 minutes on 2 CPU cores; `quick()` ~2-3 minutes
    with tiny models (for smoke tests: the numbers it produces mean nothing).

    Label budgets: at each budget in `budgets` ("all" = every tile of the train split) and each
    seed in `seeds` the demo draws the budget's tiles (seeded, nested: `pairforge.data.budget`),
    trains a joint generator on exactly those labels (`joint_minutes`; the 'all' generator once,
    its tiles are the same for every seed), generates pairs from it, fits the few-label head on the
    image-only DDPM (which saw every image and no mask) and runs the downstream experiment, whose
    real-only segmenter is the supervised baseline. Selection (early stopping, best epoch) uses
    the budget's own selection tiles, so every figure touched only its budget's labels.
    """

    grain_preset: str = "demo"
    # The image-only DDPM trains first: the segmentation head and the domain FID row read it.
    # mask and sdm: the two-stage showcase (FID, mask statistics), trained on the 'all' budget.
    train_minutes: dict[str, float] = field(
        default_factory=lambda: {"image": 2.5, "joint": 2.5, "mask": 1.25, "sdm": 2.5}
    )
    # Joint generators of the small budgets: they see 8 or 32 tiles, so they train shortly.
    joint_minutes: float = 0.75
    train_overrides: list[str] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=lambda: dict(DEMO_CONFIGS))
    budgets: list[str] = field(default_factory=lambda: ["8", "32", "all"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_pairs: int = 64
    seg_options: list[str] = field(default_factory=lambda: ["--num-models", "10"])
    # Heads of budgets over `large_budget_tiles` tiles fit on this many labeled pixels per tile
    # (a random subset; every tile still counts as read): the 'all' head has 384 fit tiles,
    # 393k pixels at 32 px, and took ~9 min on 2 busy cores with every pixel.
    large_budget_tiles: int = 64
    large_budget_pixels: int = 128
    # Inception on CPU runs ~5-10 images/s: FID on a 128-tile random subset of the real set
    # (statistics cached after the first pipeline) against all generated pairs. FID from so few
    # samples is biased upward; the report states the counts.
    fid_options: list[str] = field(
        default_factory=lambda: ["--max-items", "128", "--kid-subset-size", "48"]
    )
    downstream_options: list[str] = field(
        default_factory=lambda: ["--conditions", "real,mixed", "--steps", "200"]
    )

    @classmethod
    def full(cls, minutes: float = 30.0) -> DemoPlan:
        plan = cls()
        scale = minutes / 30.0
        plan.train_minutes = {k: v * scale for k, v in plan.train_minutes.items()}
        plan.joint_minutes *= scale
        return plan

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(
            grain_preset="tiny",
            train_minutes={"image": 1.0, "joint": 1.0, "mask": 1.0, "sdm": 1.0},
            joint_minutes=1.0,
            train_overrides=list(QUICK_TRAIN_OVERRIDES),
            budgets=["4", "all"],
            seeds=[0],
            num_pairs=6,
            seg_options=["--num-models", "2", "--epochs", "2", "--timesteps", "50,150"],
            fid_options=["--kid-subset-size", "4", "--kid-subsets", "5", "--max-items", "6"],
            downstream_options=["--conditions", "real,mixed", "--steps", "2"],
        )

    def budget_seeds(self, budget: str) -> list[int]:
        """Seeds whose generator is trained at `budget`: one for 'all' (the same tiles at every
        seed), every seed otherwise."""
        return self.seeds[:1] if budget == "all" else list(self.seeds)


def _train(plan: DemoPlan, out: Path, role: str, run: str, minutes: float, sets: list[str]):
    return train_stage(plan.configs[role], out / "runs" / run, out / "data", minutes,
                       [*sets, *plan.train_overrides])  # fmt: skip


def _training_stages(out: Path, plan: DemoPlan, seed: int) -> list[Stage]:
    stages = []
    data = out / "data"
    if not (data / "dataset.yaml").exists():
        grains = ["data", "grains", str(data), "--preset", plan.grain_preset, "--seed", str(seed)]
        stages.append(Stage("data", grains))
    minutes = plan.train_minutes
    # image-only: every training image, no mask. mask + SDM: the two-stage showcase on 'all'.
    stages.append(_train(plan, out, "image", "image", minutes["image"], [f"seed={seed}"]))
    for role in ("mask", "sdm"):
        labels = ["data.labels=all", f"data.label_seed={seed}", f"seed={seed}"]
        stages.append(_train(plan, out, role, role, minutes[role], labels))
    for budget in plan.budgets:
        for s in plan.budget_seeds(budget):
            labels = [f"data.labels={budget}", f"data.label_seed={s}", f"seed={s}"]
            run_minutes = minutes["joint"] if budget == "all" else plan.joint_minutes
            stages.append(
                _train(plan, out, "joint", f"joint-{tag(budget, s)}", run_minutes, labels)
            )
    return stages


def _generation_stages(out: Path, plan: DemoPlan, seed: int) -> list[Stage]:
    runs, syn = out / "runs", out / "synthetic"
    stages = []
    for budget in plan.budgets:
        for s in plan.budget_seeds(budget):
            name = f"joint-{tag(budget, s)}"
            args = ["generate", "--pipeline", "joint", "--run", str(runs / name), "--n",
                    str(plan.num_pairs), "--precision", "auto", "--seed", str(s), "--out",
                    str(syn / name)]  # fmt: skip
            stages.append(Stage(f"generate {name}", args))
    two_stage = ["generate", "--pipeline", "two-stage", "--mask-run", str(runs / "mask"),
                 "--sdm-run", str(runs / "sdm"), "--n", str(plan.num_pairs), "--precision",
                 "auto", "--seed", str(seed), "--out", str(syn / "two-stage")]  # fmt: skip
    stages.append(Stage("generate two-stage", two_stage))
    return stages


def _segmentation_stages(out: Path, plan: DemoPlan) -> list[Stage]:
    # Features of the image-only DDPM: it saw every training image and no mask, so the head's
    # labels are the only ones its chain touched.
    data, image_run, seg_json = out / "data", out / "runs" / "image", out / "eval" / "seg"
    stages = []
    for budget in plan.budgets:
        for s in plan.seeds:
            head = out / "seg" / f"head-{tag(budget, s)}"
            fit = ["seg", "fit", "--run", str(image_run), "--data", str(data), "--labels", budget,
                   "--label-seed", str(s), "--seed", str(s), "--out", str(head),
                   *plan.seg_options, *_large_budget_options(plan, budget)]  # fmt: skip
            evaluate = ["seg", "eval", str(head), "--data", str(data), "--split", "test", "--json"]
            capture = seg_json / f"seg_head-{tag(budget, s)}.json"
            stages.append(
                Stage(f"segmentation head {tag(budget, s)}", fit, done=head / "head.json")
            )
            stages.append(
                Stage(f"head eval {tag(budget, s)}", evaluate, capture=capture, done=capture)
            )
    return stages


def _large_budget_options(plan: DemoPlan, budget: str) -> list[str]:
    if budget == "all" or int(budget) > plan.large_budget_tiles:
        return ["--pixels-per-image", str(plan.large_budget_pixels)]
    return []


def _evaluation_stages(out: Path, plan: DemoPlan) -> list[Stage]:
    data, syn, ev = out / "data", out / "synthetic", out / "eval"
    stages = []
    # The showcase sets: both pipelines' generators trained on the 'all' budget.
    showcase = {"joint": f"joint-{tag('all', plan.seeds[0])}", "two-stage": "two-stage"}
    for label, name in showcase.items():
        # Real reference: the train split only; domain features: the neutral image-only DDPM,
        # the same network for both pipelines.
        fid = ["eval", "fid", str(data), str(syn / name), "--out", str(ev / label),
               "--real-split", "train", "--domain-run", str(out / "runs" / "image"),
               *plan.fid_options]  # fmt: skip
        stats = ["eval", "stats", str(data), str(syn / name), "--out", str(ev / label)]
        stages += [Stage(f"FID {label}", fid), Stage(f"mask statistics {label}", stats)]
    sets = [str(syn / f"joint-{tag(b, s)}") for b in plan.budgets for s in plan.budget_seeds(b)]
    downstream = ["eval", "downstream", str(data), *sets, "--out", str(ev / "downstream"),
                  "--budgets", ",".join(plan.budgets), "--seeds",
                  ",".join(str(s) for s in plan.seeds), *plan.downstream_options]  # fmt: skip
    stages.append(Stage("downstream", downstream))
    few_label = ["eval", "few-label", str(ev / "downstream" / "downstream.json"),
                 *sorted(str(ev / "seg" / f"seg_head-{tag(b, s)}.json") for b in plan.budgets
                         for s in plan.seeds), "--out", str(ev / "few-label")]  # fmt: skip
    stages.append(Stage("few-label comparison", few_label))
    return stages


def demo_stages(out: Path, plan: DemoPlan, seed: int = 0) -> list[Stage]:
    """Every stage before the report, in order (the data stage only if out/data is missing)."""
    return [
        *_training_stages(out, plan, seed),
        *_generation_stages(out, plan, seed),
        *_segmentation_stages(out, plan),
        *_evaluation_stages(out, plan),
    ]


def run_demo(out: Path, plan: DemoPlan, cli: click.Command, seed: int = 0) -> Path:
    """Run every stage into `out` with the `pairforge` root command `cli`; returns the report
    path. Timings go to out/demo.json."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run, timings = stage_runner(cli, "demo")
    for stage in demo_stages(out, plan, seed):
        run(stage)
    report = out / "report.html"
    total = round(time.perf_counter() - start, 1)
    record = {"plan": asdict(plan), "seed": seed, "seconds": timings, "total_seconds": total}
    atomic_write_text(out / "demo.json", json.dumps(record, indent=2))
    run(Stage("report", ["report", str(out), "--out", str(report), "--title", "pairforge demo"]))
    typer.secho(f"\ndemo finished in {total / 60:.1f} min: open {report}", bold=True, err=True)
    return report


def demo_command(
    ctx: typer.Context,
    out: Path = typer.Option(
        Path("runs/demo"), "--out", help="Folder for data, runs, samples, eval and report."
    ),
    minutes: float = typer.Option(
        30.0, "--minutes", min=1.0, help="Approximate total time budget (scales training)."
    ),
    seeds: str = typer.Option(
        None, "--seeds", help="Label-budget seeds, comma list [default: 0,1,2; quick: 0]."
    ),
    budgets: str = typer.Option(
        None, "--budgets", help="Label budgets in tiles, comma list [default: 8,32,all]."
    ),
    train_sets: list[str] = typer.Option(
        None,
        "--set",
        help="Extra `train --set key=value` for every training run (repeatable), "
        "e.g. data.crop_size=64 for a dataset put in OUT/data beforehand.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the data, training and sampling."),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny models and data: a 1-2 minute smoke run."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
) -> None:
    """Run the whole pipeline on built-in grain measurements and write OUT/report.html.

    A dataset already in OUT/data is used instead of the grains (e.g. `pairforge data nuclei
    OUT/data`, then `pairforge demo --out OUT --set data.crop_size=64`).

    Example: pairforge demo --out runs/demo
    """
    plan = DemoPlan.quick() if quick else DemoPlan.full(minutes)
    if seeds:
        plan.seeds = parse_list(seeds, "--seeds", int)
    if budgets:
        plan.budgets = parse_list(budgets, "--budgets", budget_text)
    plan.train_overrides += list(train_sets or [])
    if dry_run:
        typer.echo(json.dumps(asdict(plan), indent=2))
        return
    if out.exists() and not out.is_dir():
        raise PairforgeError(f"--out {out}: is a file; pass a folder")
    run_demo(out, plan, ctx.find_root().command, seed=seed)
