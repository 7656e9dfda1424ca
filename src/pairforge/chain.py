"""Chains of ordinary `pairforge` commands (the demo, the factory): stages that print the command
they run, so it can be copied and rerun by hand, skip finished work and record their times."""

from __future__ import annotations

import contextlib
import io
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text


@dataclass
class Stage:
    """One stage: one `pairforge` command (its arguments); `capture` keeps stdout (JSON);
    `done`: a file the command writes last, whose presence means a rerun skips the stage (for
    commands that do not resume by themselves)."""

    name: str
    args: list[str]
    capture: Path | None = None
    done: Path | None = None


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


def stage_runner(cli: click.Command, what: str) -> tuple[Callable[[Stage], None], dict[str, float]]:
    """(run, timings): run(stage) echoes a header with the time so far, skips a stage whose
    `done` file exists, else invokes it and records its seconds in timings[stage.name]."""
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def run(stage: Stage) -> None:
        t0 = time.perf_counter()
        elapsed = (t0 - start) / 60
        typer.secho(f"\n== {stage.name}  ({what} time so far {elapsed:.1f} min)", bold=True,
                    err=True)  # fmt: skip
        if stage.done is not None and stage.done.exists():
            typer.echo(f"done already: {stage.done} exists (delete it to rerun)", err=True)
            return
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
