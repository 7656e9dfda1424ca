"""Chains of ordinary `pairforge` commands (the demo, the factory): stages that print the command
they run, so it can be copied and rerun by hand, skip finished work and record their times."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text

# Training overrides of the smoke runs (`demo --quick`, `factory --quick`): tiny models, a few
# steps; the numbers they produce mean nothing.
QUICK_TRAIN_OVERRIDES = (
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
)


# The CPU configs of the demo and the factory, per training role.
DEMO_CONFIGS = {
    "image": "demo-image",
    "joint": "demo-joint",
    "mask": "demo-mask",
    "sdm": "demo-sdm",
}


@dataclass
class Stage:
    """One stage: one `pairforge` command (its arguments); `capture` keeps stdout (JSON);
    `done`: a file the command writes last, whose presence means a rerun skips the stage (for
    commands that do not resume by themselves)."""

    name: str
    args: list[str]
    capture: Path | None = None
    done: Path | None = None


def train_stage(config: str, run: Path, data: Path, minutes: float, sets=()) -> Stage:
    """`pairforge train CONFIG --out RUN` on `data` for `minutes`, with extra `--set`s."""
    args = ["train", config, "--out", str(run)]
    for value in [f"data.path={data}", f"optim.max_minutes={minutes:g}", *sets]:
        args += ["--set", value]
    return Stage(f"train {run.name}", args)


def invoke(command: click.Command, args: list[str], capture: Path | None = None) -> None:
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


def _command_file(done: Path) -> Path:
    """Where the command that wrote a stage's `done` file is kept, beside it."""
    return done.with_name(f".{done.name}.command.json")


def _finished(stage: Stage) -> str | None:
    """Why `stage` need not run (its `done` file exists and was written by the same command),
    or None. A done file whose recorded command differs (other settings) is stale: rerun."""
    if stage.done is None or not stage.done.exists():
        return None
    record = _command_file(stage.done)
    try:
        args = json.loads(record.read_text())["args"]
    except FileNotFoundError:
        return f"{stage.done} exists (delete it to rerun)"  # written before commands were kept
    except (OSError, ValueError, KeyError, TypeError):
        args = None
    if args != stage.args:
        typer.echo(f"{stage.done} was written by another command: rerunning", err=True)
        return None
    return f"{stage.done} exists, written by this command (delete it to rerun)"


def stage_runner(cli: click.Command, what: str) -> tuple[Callable[[Stage], None], dict[str, float]]:
    """(run, timings): run(stage) echoes a header with the time so far, skips a stage whose
    `done` file exists and was written by the same command, else invokes it (recording the
    command beside the done file) and records its seconds in timings[stage.name]."""
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def run(stage: Stage) -> None:
        t0 = time.perf_counter()
        elapsed = (t0 - start) / 60
        typer.secho(f"\n== {stage.name}  ({what} time so far {elapsed:.1f} min)", bold=True,
                    err=True)  # fmt: skip
        reason = _finished(stage)
        if reason is not None:
            typer.echo(f"done already: {reason}", err=True)
            return
        if stage.done is not None:
            # A stale done file goes first, and the command is kept before it runs: a stage
            # interrupted now has no done file, so the next run redoes it.
            stage.done.unlink(missing_ok=True)
            stage.done.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(_command_file(stage.done), json.dumps({"args": stage.args}))
        invoke(cli, stage.args, capture=stage.capture)
        timings[stage.name] = round(time.perf_counter() - t0, 1)

    return run, timings


def tag(budget: str, seed: int) -> str:
    """Folder suffix of one (budget, seed): b8-s0, ball-s0."""
    return f"b{budget}-s{seed}"


def budget_text(text: str) -> str:
    """A --budgets entry ("8", "all") checked and normalized."""
    from pairforge.data.budget import parse_labels

    value = parse_labels(text, "--budgets")
    return "all" if value is None else str(value)


def parse_list(text: str, flag: str, convert) -> list:
    """A comma list of `flag` converted per entry; PairforgeError naming the flag."""
    try:
        values = [convert(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PairforgeError(f"{flag} {text!r}: give a comma list, e.g. 0,1,2") from None
    if not values:
        raise PairforgeError(f"{flag} {text!r}: give at least one value")
    return values
