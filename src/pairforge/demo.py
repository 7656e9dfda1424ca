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

import contextlib
import io
import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text


@dataclass
class DemoPlan:
    """Sizes of one demo run. `full()` targets ~15 minutes on 2 CPU cores (9.5 of them training:
    image 2.5, joint 3, mask 1.25, SDM 2.75); `quick()` ~1-2 minutes with tiny models (for smoke
    tests: the numbers it produces mean nothing)."""

    grain_preset: str = "demo"
    # The image-only DDPM trains first: the segmentation head and the domain FID row read it.
    train_minutes: dict[str, float] = field(
        default_factory=lambda: {"image": 2.5, "joint": 3.0, "mask": 1.25, "sdm": 2.75}
    )
    train_overrides: list[str] = field(default_factory=list)
    configs: dict[str, str] = field(
        default_factory=lambda: {
            "image": "demo-image",
            "joint": "demo-joint",
            "mask": "demo-mask",
            "sdm": "demo-sdm",
        }
    )
    num_pairs: int = 96
    labeled_tiles: int = 8
    seg_options: list[str] = field(default_factory=lambda: ["--num-models", "10"])
    # The baseline needs ~300 epochs on 8 tiles to reach its best validation mIoU; fewer would
    # make the diffusion-feature head look better than it is.
    baseline_epochs: int = 400
    # Inception on CPU runs ~5-10 images/s: FID on a 128-tile random subset of the real set
    # (statistics cached after the first pipeline) against all generated pairs. FID from so few
    # samples is biased upward; the report states the counts.
    fid_options: list[str] = field(
        default_factory=lambda: ["--max-items", "128", "--kid-subset-size", "48"]
    )
    downstream_options: list[str] = field(
        default_factory=lambda: ["--budgets", "8,32", "--seeds", "0,1,2", "--steps", "200"]
    )
    downstream_pipelines: list[str] = field(default_factory=lambda: ["joint"])

    @classmethod
    def full(cls, minutes: float = 15.0) -> DemoPlan:
        plan = cls()
        scale = minutes / 15.0
        plan.train_minutes = {k: v * scale for k, v in plan.train_minutes.items()}
        return plan

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(
            grain_preset="tiny",
            train_minutes={"image": 1.0, "joint": 1.0, "mask": 1.0, "sdm": 1.0},
            train_overrides=[
                "model.preset=tiny",
                "model.block_out_channels=null",
                "model.attention_levels=null",
                "data.crop_size=32",
                "data.resolution=16",
                "optim.max_steps=3",
                "optim.batch_size=4",
                "optim.warmup_steps=0",
                "log.sample_every=0",
                "log.checkpoint_every=3",
                "log.progress=false",
            ],
            num_pairs=6,
            labeled_tiles=4,
            seg_options=["--num-models", "2", "--epochs", "2", "--timesteps", "50,150"],
            baseline_epochs=2,
            fid_options=["--kid-subset-size", "4", "--kid-subsets", "5", "--max-items", "6"],
            downstream_options=["--budgets", "2", "--seeds", "0", "--steps", "2"],
            downstream_pipelines=["joint"],
        )


def _invoke(command: click.Command, args: list[str], capture: Path | None = None) -> None:
    """Run one `pairforge` command (`command`: the root CLI group) in this process, echoing it."""
    typer.secho("$ pairforge " + shlex.join(args), fg=typer.colors.CYAN, err=True)
    if capture is None:
        command.main(args, prog_name="pairforge", standalone_mode=False)
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        command.main(args, prog_name="pairforge", standalone_mode=False)
    capture.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(capture, buffer.getvalue())
    typer.echo(buffer.getvalue().rstrip())


@dataclass
class Stage:
    """One demo stage: one `pairforge` command (its arguments); `capture` keeps stdout (JSON)."""

    name: str
    args: list[str]
    capture: Path | None = None


def _training_stages(out: Path, plan: DemoPlan, seed: int) -> list[Stage]:
    stages = []
    data = out / "data"
    if not (data / "dataset.yaml").exists():
        grains = ["data", "grains", str(data), "--preset", plan.grain_preset, "--seed", str(seed)]
        stages.append(Stage("data", grains))
    for role in ("image", "joint", "mask", "sdm"):
        sets = [f"data.path={data}", f"optim.max_minutes={plan.train_minutes[role]}",
                f"seed={seed}", *plan.train_overrides]  # fmt: skip
        args = ["train", plan.configs[role], "--out", str(out / "runs" / role)]
        for value in sets:
            args += ["--set", value]
        stages.append(Stage(f"train {role}", args))
    return stages


def _generation_stages(out: Path, plan: DemoPlan, seed: int) -> list[Stage]:
    runs, syn = out / "runs", out / "synthetic"
    common = ["--n", str(plan.num_pairs), "--precision", "auto", "--seed", str(seed)]
    joint = ["generate", "--pipeline", "joint", "--run", str(runs / "joint"), *common,
             "--out", str(syn / "joint")]  # fmt: skip
    two_stage = ["generate", "--pipeline", "two-stage", "--mask-run", str(runs / "mask"),
                 "--sdm-run", str(runs / "sdm"), *common, "--out", str(syn / "two-stage")]  # fmt: skip
    return [Stage("generate joint", joint), Stage("generate two-stage", two_stage)]


def _segmentation_stages(out: Path, plan: DemoPlan, seed: int) -> list[Stage]:
    # Features of the image-only DDPM: it saw every training image and no mask, so the head's
    # labels are the only ones its chain touched.
    data, image_run, head = out / "data", out / "runs" / "image", out / "seg" / "head"
    budget, seg_json = str(plan.labeled_tiles), out / "eval" / "seg"
    fit = ["seg", "fit", "--run", str(image_run), "--data", str(data), "--max-images", budget,
           "--out", str(head), "--seed", str(seed), *plan.seg_options]  # fmt: skip
    evaluate = ["seg", "eval", str(head), "--data", str(data), "--split", "test", "--json"]
    baseline = ["seg", "baseline", "--run", str(image_run), "--data", str(data), "--max-images",
                budget, "--epochs", str(plan.baseline_epochs), "--seed", str(seed), "--json"]  # fmt: skip
    return [
        Stage("segmentation head", fit),
        Stage("segmentation head eval", evaluate, capture=seg_json / "seg_head.json"),
        Stage("supervised baseline", baseline, capture=seg_json / "seg_baseline.json"),
    ]


def _evaluation_stages(out: Path, plan: DemoPlan) -> list[Stage]:
    data, syn, ev = out / "data", out / "synthetic", out / "eval"
    stages = []
    for pipeline in ("joint", "two-stage"):
        # Real reference: the train split only; domain features: the neutral image-only DDPM,
        # the same network for both pipelines.
        fid = ["eval", "fid", str(data), str(syn / pipeline), "--out", str(ev / pipeline),
               "--real-split", "train", "--domain-run", str(out / "runs" / "image"),
               *plan.fid_options]  # fmt: skip
        stats = ["eval", "stats", str(data), str(syn / pipeline), "--out", str(ev / pipeline)]
        stages += [Stage(f"FID {pipeline}", fid), Stage(f"mask statistics {pipeline}", stats)]
    for pipeline in plan.downstream_pipelines:
        downstream = ["eval", "downstream", str(data), str(syn / pipeline), "--out",
                      str(ev / pipeline), *plan.downstream_options]  # fmt: skip
        stages.append(Stage(f"downstream {pipeline}", downstream))
    return stages


def demo_stages(out: Path, plan: DemoPlan, seed: int = 0) -> list[Stage]:
    """Every stage before the report, in order (the data stage only if out/data is missing)."""
    return [
        *_training_stages(out, plan, seed),
        *_generation_stages(out, plan, seed),
        *_segmentation_stages(out, plan, seed),
        *_evaluation_stages(out, plan),
    ]


def run_demo(out: Path, plan: DemoPlan, cli: click.Command, seed: int = 0) -> Path:
    """Run every stage into `out` with the `pairforge` root command `cli`; returns the report
    path. Timings go to out/demo.json."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def run(stage: Stage) -> None:
        t0 = time.perf_counter()
        elapsed = (t0 - start) / 60
        typer.secho(f"\n== {stage.name}  (demo time so far {elapsed:.1f} min)", bold=True, err=True)
        _invoke(cli, stage.args, capture=stage.capture)
        timings[stage.name] = round(time.perf_counter() - t0, 1)

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
        15.0, "--minutes", min=1.0, help="Approximate total time budget (scales training)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the data, training and sampling."),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny models and data: a 1-2 minute smoke run."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
) -> None:
    """Run the whole pipeline on built-in grain measurements and write OUT/report.html.

    Example: pairforge demo --out runs/demo
    """
    plan = DemoPlan.quick() if quick else DemoPlan.full(minutes)
    if dry_run:
        typer.echo(json.dumps(asdict(plan), indent=2))
        return
    if out.exists() and not out.is_dir():
        raise PairforgeError(f"--out {out}: is a file; pass a folder")
    run_demo(out, plan, ctx.find_root().command, seed=seed)
