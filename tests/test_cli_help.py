"""Every command's --help shows its help text as written: brackets kept, examples shown."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from pairforge.cli import app

WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}


def command_paths() -> list[tuple[tuple[str, ...], object]]:
    """(path of names, click command) for the root, every group and every command."""
    found = []

    def walk(command, path: tuple[str, ...]) -> None:  # typer's (vendored) click commands
        found.append((path, command))
        if hasattr(command, "commands"):  # a group
            for name, sub in sorted(command.commands.items()):
                walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = command_paths()


def unescaped(text: str | None) -> str:
    """A help string as the reader should see it (the CLI escapes rich markup brackets)."""
    return (text or "").replace("\\[", "[")


def flat(text: str) -> str:
    """Help output without table borders and line wrapping: words separated by one space."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def source_texts(command) -> list[str]:
    return [unescaped(command.help)] + [unescaped(getattr(p, "help", None)) for p in command.params]


def help_output(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, (path, result.output)
    return result.output


def test_the_walk_reaches_every_sub_app_and_verb():
    paths = {" ".join(path) for path, _ in COMMANDS}
    expected = {"train", "sample", "generate", "report", "demo", "factory", "data import",
                "data check", "seg predict", "seg fit", "eval fid", "eval downstream"}  # fmt: skip
    assert expected <= paths, expected - paths
    assert len(paths) >= 27


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "root" for p, _ in COMMANDS])
def test_help_keeps_brackets_and_shows_examples(path, command):
    output = help_output(path)
    text = flat(output)
    # What eaten markup leaves behind.
    for artefact in (r"\[\s*\]", r"\(\s*\)", r"\s\.(\s|$)", r"\s,\s*\."):
        assert not re.search(artefact, text), (path, artefact, re.search(artefact, text))
    # Every bracketed phrase of the source help strings survives.
    for source in source_texts(command):
        for phrase in re.findall(r"\[[^\[\]\n]*\]", source):
            assert flat(phrase) in text, (path, phrase)
    # Examples: each example command line appears, and the summary is not "... Examples:".
    help_text = unescaped(command.help)
    if "Example" in help_text:
        after = help_text[help_text.index("Example") :]
        lines = [
            line[line.index("pairforge ") :] for line in after.splitlines() if "pairforge " in line
        ]
        assert lines, (path, "no example command line after 'Example'")
        for line in lines:
            assert flat(line) in text, (path, line)
        summary = output.split("Usage:", 1)[1].splitlines()[1:]
        first = next(line.strip() for line in summary if line.strip())
        assert not re.search(r"Examples?:\s*$", first), (path, first)


def test_the_issue_examples_read_as_written():
    overlap = flat(help_output(("seg", "predict")))
    assert "Window overlap in model px [default: half a window]." in overlap
    palette = flat(help_output(("data", "import")))
    assert "YAML/JSON palette, name: [r, g, b] per class." in palette
    generate = help_output(("generate",)).split("Usage:", 1)[1].splitlines()
    assert [line.strip() for line in generate if line.strip()][1] == (
        "Generate image + mask pairs into a dataset folder."
    )
