"""`pairforge factory`: from a few labeled tiles and many unlabeled images to a segmenter.

The semi-supervised chain, per label budget and seed, as ordinary `pairforge` commands printed
before each runs (copy one to rerun it by hand):

1. `train` an image-only DDPM on every training image (no mask; once for all budgets).
2. `seg fit`: the pixel-MLP head on the budget's labels, features of that DDPM.
3. `seg baseline`: the supervised smp U-Net on the same labels (what the labels alone give).
4. `seg pseudolabel`: the head labels every training measurement; uncertain pixels become
   unlabeled by a threshold chosen on the budget's select tiles; `--filled-out` writes the same
   measurements labeled at every pixel for the generators.
5. `seg distill`: the smp segmenter on the budget's labels + the pseudo-labels.
6. `train` the generator(s) (joint, or mask + SDM) on the filled pseudo-labeled set, so they
   learn masks from every measurement rather than the budget's few tiles; `generate` pairs.
7. `seg filter`: keep the pairs whose mask the head agrees with (threshold on the select tiles).
8. `seg distill` again, with the kept pairs added.
9. `eval factory`: every method against the baseline and the head, paired per seed, per class.
10. `report`.

Labels: every step reads only the budget's tiles (fit tiles to train, select tiles to choose
thresholds and best epochs), checked by each command from the records it reads. The test split
is only scored. Every step resumes (or is skipped once its result file exists), so rerunning the
same command continues where it stopped; `--minutes` stops the chain at the first stage
boundary past the time limit.
"""

from __future__ import annotations

import json
import shlex
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

GENERATORS = ("joint", "two-stage")
RUN_RECORD = "factory_run.json"
# Result folders under OUT/eval/results, one JSON per (budget, seed): what `eval factory` reads.
RESULT_METHODS = ("baseline", "head", "distill", "distill-synthetic")


@dataclass
class FactoryPlan:
    """Sizes of one factory run (defaults: the built-in grains at demo scale on 2 CPU cores,
    about 10 minutes per budget and seed after the 2.5-minute image DDPM)."""

    budgets: list[str] = field(default_factory=lambda: ["8"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    generator: str = "joint"
    image_minutes: float = 2.5
    generator_minutes: float = 1.5
    configs: dict[str, str] = field(default_factory=lambda: dict(DEMO_CONFIGS))
    train_overrides: list[str] = field(default_factory=list)
    num_pairs: int = 64
    head_options: list[str] = field(default_factory=lambda: ["--num-models", "10"])
    # Heads of budgets over this many tiles fit on a random subset of labeled pixels per tile.
    large_budget_tiles: int = 64
    large_budget_pixels: int = 128
    # The baseline trains a fixed number of steps at every budget (400 = 400 epochs of the
    # 6 fit tiles of budget 8; 400 epochs of the 384 tiles of 'all' would take hours on a CPU).
    baseline_options: list[str] = field(default_factory=lambda: ["--steps", "400"])
    # Windows without overlap: each is a crop like the head's training crops, and a 512 x 2048
    # grain measurement takes 64 windows instead of 217 (the head's MLPs run at every source
    # pixel of every window: the cost of the step).
    pseudo_options: list[str] = field(default_factory=lambda: ["--overlap", "0"])
    filter_options: list[str] = field(default_factory=list)
    distill_epochs: int = 10
    pseudo_crops: int | None = None  # None: seg distill's default (4 crops per crop area)
    synthetic_weights: str = "real=1,pseudo=1,synthetic=0.5"
    grain_preset: str = "demo"

    @classmethod
    def quick(cls) -> FactoryPlan:
        """Tiny models, two steps each: a smoke run of the whole chain (numbers mean nothing)."""
        return cls(
            budgets=["4"],
            seeds=[0],
            image_minutes=1.0,
            generator_minutes=1.0,
            train_overrides=list(QUICK_TRAIN_OVERRIDES),
            num_pairs=6,
            head_options=["--num-models", "2", "--epochs", "2", "--timesteps", "50,150"],
            baseline_options=["--epochs", "2"],
            distill_epochs=1,
            pseudo_crops=16,
            grain_preset="tiny",
        )


def _train(plan: FactoryPlan, role: str, run: Path, data: Path, minutes: float, sets=()):
    return train_stage(plan.configs[role], run, data, minutes, [*sets, *plan.train_overrides])


def _result(out: Path, method: str, name: str) -> Path:
    return out / "eval" / "results" / method / f"{name}.json"


def _json_stage(name: str, args: list[str], capture: Path) -> Stage:
    return Stage(name, args, capture=capture, done=capture)


def _generator_stages(plan: FactoryPlan, out: Path, name: str, filled: Path, s: int):
    runs, syn = out / "runs", out / "synthetic" / name
    sets = [f"seed={s}"]
    if plan.generator == "joint":
        run = runs / f"joint-{name}"
        stages = [_train(plan, "joint", run, filled, plan.generator_minutes, sets)]
        gen = ["generate", "--pipeline", "joint", "--run", str(run)]
    else:
        mask, sdm = runs / f"mask-{name}", runs / f"sdm-{name}"
        stages = [_train(plan, "mask", mask, filled, plan.generator_minutes, sets),
                  _train(plan, "sdm", sdm, filled, plan.generator_minutes, sets)]  # fmt: skip
        gen = ["generate", "--pipeline", "two-stage", "--mask-run", str(mask), "--sdm-run",
               str(sdm)]  # fmt: skip
    gen += ["--n", str(plan.num_pairs), "--precision", "auto", "--seed", str(s), "--out",
            str(syn), "--no-progress"]  # fmt: skip
    return [*stages, Stage(f"generate {name}", gen)]


def chain_stages(plan: FactoryPlan, out: Path, data: Path, image_run: Path, budget: str, s: int):
    """(first, second): the stages of one (budget, seed), steps 2-5 and 6-8 of the module
    docstring (every seed's first part runs before any generator is trained, so a time limit
    leaves whole comparisons of the cheaper steps)."""
    name = tag(budget, s)
    head, pseudo = out / "seg" / f"head-{name}", out / "pseudo" / name
    filled, syn = out / "pseudo" / f"{name}-filled", out / "synthetic" / name
    filtered = out / "synthetic" / f"{name}-filtered"
    labels = ["--labels", budget, "--label-seed", str(s)]
    large = budget == "all" or int(budget) > plan.large_budget_tiles
    pixels = ["--pixels-per-image", str(plan.large_budget_pixels)] if large else []
    fit = ["seg", "fit", "--run", str(image_run), "--data", str(data), *labels, "--seed", str(s),
           "--out", str(head), *plan.head_options, *pixels]  # fmt: skip
    head_eval = ["seg", "eval", str(head), "--data", str(data), "--split", "test", "--json"]
    baseline = ["seg", "baseline", "--run", str(image_run), "--data", str(data), *labels,
                "--seed", str(s), "--eval-split", "test", "--json", "--out",
                str(out / "seg" / f"baseline-{name}"), *plan.baseline_options]  # fmt: skip
    label = ["seg", "pseudolabel", str(head), "--data", str(data), "--out", str(pseudo),
             "--filled-out", str(filled), *plan.pseudo_options]  # fmt: skip
    distill = ["seg", "distill", "--data", str(data), "--pseudo", str(pseudo), *labels, "--seed",
               str(s), "--eval-split", "test", "--json", "--weights",
               "real=1,pseudo=1,synthetic=0", "--epochs", str(plan.distill_epochs)]  # fmt: skip
    if plan.pseudo_crops is not None:
        distill += ["--pseudo-crops", str(plan.pseudo_crops)]
    keep = ["seg", "filter", str(syn), "--head", str(head), "--data", str(data), "--out",
            str(filtered), *plan.filter_options]  # fmt: skip
    distill_syn = [*distill, "--synthetic", str(filtered)]
    distill_syn[distill_syn.index("--weights") + 1] = plan.synthetic_weights
    first = [
        Stage(f"head {name}", fit, done=head / "head.json"),
        _json_stage(f"head eval {name}", head_eval, _result(out, "head", name)),
        _json_stage(f"baseline {name}", baseline, _result(out, "baseline", name)),
        Stage(f"pseudo-labels {name}", label),
        _json_stage(
            f"distill {name}",
            [*distill, "--out", str(out / "seg" / f"distill-{name}")],
            _result(out, "distill", name),
        ),  # fmt: skip
    ]
    second = [
        *_generator_stages(plan, out, name, filled, s),
        Stage(f"filter {name}", keep),
        _json_stage(
            f"distill + synthetic {name}",
            [*distill_syn, "--out", str(out / "seg" / f"distill-synthetic-{name}")],
            _result(out, "distill-synthetic", name),
        ),  # fmt: skip
    ]
    return first, second


def all_stages(plan: FactoryPlan, out: Path, data: Path | None, image_run: Path | None):
    """Every stage before the comparison, in run order."""
    data, image_run, stages = setup_stages(plan, out, data, image_run)
    parts = [chain_stages(plan, out, data, image_run, b, s) for b in plan.budgets
             for s in plan.seeds]  # fmt: skip
    return [
        *stages,
        *(st for first, _ in parts for st in first),
        *(st for _, second in parts for st in second),
    ]


def setup_stages(plan: FactoryPlan, out: Path, data: Path | None, image_run: Path | None):
    """(data, image_run, stages): the built-in grains when no data is given, the image DDPM
    when no run is given."""
    stages = []
    if data is None:
        data = out / "data"
        if not (data / "dataset.yaml").exists():
            grains = ["data", "grains", str(data), "--preset", plan.grain_preset]
            stages.append(Stage("data", grains))
    if image_run is None:
        image_run = out / "runs" / "image"
        stages.append(_train(plan, "image", image_run, data, plan.image_minutes, ["seed=0"]))
    return data, image_run, stages


def final_stages(out: Path) -> list[Stage]:
    """The comparison over every finished (budget, seed) and the report."""
    compare = ["eval", "factory", str(out / "eval" / "results"), "--chain-root", str(out),
               "--out", str(out / "eval" / "factory")]  # fmt: skip
    report = ["report", str(out), "--out", str(out / "report.html"), "--title",
              "pairforge factory"]  # fmt: skip
    return [Stage("factory comparison", compare), Stage("report", report)]


def _merged_record(out: Path, now: dict) -> dict:
    """This invocation's record, keeping the stage times of earlier invocations into the same
    folder (a rerun for more budgets or seeds adds to them; a stage run again is replaced):
    "seconds" holds every stage's latest time, "invocations" each call's plan and total, and
    "total_seconds" their sum."""
    try:
        before = json.loads((out / RUN_RECORD).read_text())
    except (OSError, ValueError):
        before = {}
    calls = before.get("invocations") or (
        [{k: before[k] for k in ("plan", "total_seconds", "stopped_before") if k in before}]
        if "total_seconds" in before else []
    )  # fmt: skip
    calls.append({k: now[k] for k in ("plan", "total_seconds", "stopped_before")})
    seconds = {**before.get("seconds", {}), **now["seconds"]}
    total = round(sum(c["total_seconds"] for c in calls), 1)
    return {**now, "seconds": seconds, "invocations": calls, "total_seconds": total}


def run_factory(
    out: Path,
    plan: FactoryPlan,
    cli: click.Command,
    *,
    data: Path | None = None,
    image_run: Path | None = None,
    minutes: float | None = None,
) -> dict:
    """Run the chain into `out`; stop at the first stage boundary past `minutes` (then the
    comparison and report cover the finished seeds). Returns the OUT/factory_run.json record
    (plan, seconds per stage; the report shows them)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run, timings = stage_runner(cli, "factory")
    stopped = None
    for stage in all_stages(plan, out, data, image_run):
        if minutes is not None and (time.perf_counter() - start) / 60 > minutes:
            stopped = stage.name
            typer.secho(f"\ntime limit of {minutes:g} min reached before '{stage.name}'; rerun "
                        "the same command to continue", fg=typer.colors.YELLOW, err=True)  # fmt: skip
            break
        run(stage)
    record = _merged_record(out, {
        "plan": asdict(plan), "data": str(data or out / "data"),
        "image_run": str(image_run or out / "runs" / "image"), "seconds": timings,
        "stopped_before": stopped, "total_seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
    atomic_write_text(out / RUN_RECORD, json.dumps(record, indent=2))
    compare, report = final_stages(out)
    if any((out / "eval" / "results" / "baseline").glob("*.json")):
        run(compare)
    else:
        typer.echo("no (budget, seed) has its baseline yet: no comparison", err=True)
    run(report)
    return record


def factory_command(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/factory"), "--out", help="Folder of the whole chain."),
    data: Path = typer.Option(
        None, "--data", help="Dataset (train split labeled, test split scored) [default: grains]."
    ),
    labels: str = typer.Option(
        None, "--labels", help="Label budgets in tiles, comma list, e.g. 8 or 8,32,all [8]."
    ),
    seeds: str = typer.Option(None, "--seeds", help="Label-budget seeds, comma list [0,1,2]."),
    minutes: float = typer.Option(
        None, "--minutes", min=0.0, help="Stop at the first step past this many minutes."
    ),
    generator: str = typer.Option("joint", "--generator", help="joint | two-stage."),
    image_run: Path = typer.Option(
        None, "--image-run", help="An image-only DDPM run to reuse (its training is skipped)."
    ),
    image_minutes: float = typer.Option(
        None, "--image-minutes", min=0.1, help="Training time of the image DDPM [2.5]."
    ),
    generator_minutes: float = typer.Option(
        None, "--generator-minutes", min=0.1, help="Training time of each generator [1.5]."
    ),
    distill_epochs: int = typer.Option(
        None, "--distill-epochs", min=1, help="Epochs of each distillation [10]."
    ),
    pseudo_crops: int = typer.Option(
        None, "--pseudo-crops", min=1, help="Pseudo-labeled crops per distillation [4 per area]."
    ),
    train_sets: list[str] = typer.Option(
        None, "--set", help="Extra `train --set key=value` for every training run (repeatable)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Tiny models: a smoke run of the chain."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands and exit."),
) -> None:
    """Few labels + unlabeled images -> head, pseudo-labels, generators, filtered pairs and a
    distilled segmenter, compared with the labels alone; resumable, ends in OUT/report.html.

    Example:

      pairforge factory --labels 8 --seeds 0,1,2 --out runs/factory
    """
    plan = FactoryPlan.quick() if quick else FactoryPlan()
    if labels:
        plan.budgets = parse_list(labels, "--labels", budget_text)
    if seeds:
        plan.seeds = parse_list(seeds, "--seeds", int)
    if generator not in GENERATORS:
        raise PairforgeError(f"--generator {generator!r}: use one of {', '.join(GENERATORS)}")
    plan.generator = generator
    if distill_epochs is not None:
        plan.distill_epochs = distill_epochs
    if pseudo_crops is not None:
        plan.pseudo_crops = pseudo_crops
    if image_minutes is not None:
        plan.image_minutes = image_minutes
    if generator_minutes is not None:
        plan.generator_minutes = generator_minutes
    plan.train_overrides += list(train_sets or [])
    if data is not None and not (data / "dataset.yaml").exists():
        raise PairforgeError(f"--data {data}: no dataset.yaml; give a pairforge dataset folder")
    if out.exists() and not out.is_dir():
        raise PairforgeError(f"--out {out}: is a file; pass a folder")
    if dry_run:
        for stage in [*all_stages(plan, out, data, image_run), *final_stages(out)]:
            typer.echo("pairforge " + shlex.join(stage.args))
        return
    run_factory(out, plan, ctx.find_root().command, data=data, image_run=image_run,
                minutes=minutes)  # fmt: skip
    typer.secho(f"\nfactory finished: open {out / 'report.html'}", bold=True, err=True)
