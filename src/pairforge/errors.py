"""User-facing errors: raised for bad input, printed by the CLI without a traceback."""

from __future__ import annotations

from typing import Any, NamedTuple


class PairforgeError(Exception):
    """A problem the user can fix. The message names the file or key, the bad value and the fix."""


class ValidationProblem(NamedTuple):
    """One problem of a pydantic ValidationError, in the words the messages use."""

    key: str  # dotted path of the bad key, "" for a check of the whole object
    message: str  # what is wrong (pydantic's "Value error, " prefix removed)
    got: str | None  # repr of the bad value; None for unknown keys and whole-object checks


def validation_problems(err: Any) -> list[ValidationProblem]:
    """The problems of a pydantic `ValidationError` (anything with `.errors()`), in order.

    An unknown key (extra="forbid") gets the message "unknown key '<key>'; remove it or check
    its spelling". The input of a whole-object check is the whole object, so it is not shown.
    """
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(
                ValidationProblem(
                    key, f"unknown key {key!r}; remove it or check its spelling", None
                )
            )
            continue
        got = repr(e["input"]) if "input" in e and e["loc"] else None
        problems.append(ValidationProblem(key, e["msg"].removeprefix("Value error, "), got))
    return problems


def format_validation_error(err: Any, source: str) -> str:
    """One line per problem of a pydantic ValidationError: `source: key.path: message (got value)`."""
    return "\n".join(
        f"{source}: {p.key or '(top level)'}: {p.message}{f' (got {p.got})' if p.got else ''}"
        for p in validation_problems(err)
    )
