"""The `pairforge` command line: one verb per subcommand, composed from the sub-apps."""

from __future__ import annotations

import sys

import typer

from pairforge.errors import PairforgeError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="pairforge: labeled segmentation data from diffusion models.",
)


def _compose() -> None:
    from pairforge.data.cli import app as data_app
    from pairforge.demo import demo_command
    from pairforge.eval.cli import app as eval_app
    from pairforge.eval.cli import report_command
    from pairforge.factory import factory_command
    from pairforge.generate.cli import app as generate_app
    from pairforge.seg.cli import app as seg_app
    from pairforge.train.cli import app as train_app

    app.add_typer(data_app, name="data", help="Built-in data, importers and checks.")
    app.add_typer(seg_app, name="seg", help="Label-efficient segmentation from diffusion features.")
    app.add_typer(eval_app, name="eval", help="FID / KID, mask statistics, downstream experiment.")
    # train/ and generate/ contribute top-level verbs (train, sample, generate).
    for sub in (train_app, generate_app):
        for command in sub.registered_commands:
            app.registered_commands.append(command)
    app.command("report")(report_command)
    app.command("demo")(demo_command)
    app.command("factory")(factory_command)


def _escape_markup(root: typer.Typer) -> None:
    """Show help text as written: typer renders every help string as rich markup, in which
    bracketed text like "[default: 0,1,2]" or "[r, g, b]" is a style tag and vanishes. Escape
    the brackets of every command's, group's and option's help once, here where the command
    tree is composed (the sub-apps share option objects, hence `seen`)."""
    import inspect

    from rich.markup import escape
    from typer.models import ParameterInfo

    seen: set[int] = set()

    def walk(sub: typer.Typer) -> None:
        if sub.info.help is not None:
            sub.info.help = escape(inspect.cleandoc(sub.info.help))
        for command in sub.registered_commands:
            if id(command) in seen:
                continue
            seen.add(id(command))
            text = command.help if command.help is not None else inspect.getdoc(command.callback)
            if text is not None:
                command.help = escape(inspect.cleandoc(text))
            for param in inspect.signature(command.callback).parameters.values():
                info = param.default
                if isinstance(info, ParameterInfo) and id(info) not in seen and info.help:
                    seen.add(id(info))
                    info.help = escape(info.help)
        for group in sub.registered_groups:
            if group.help is not None:
                group.help = escape(inspect.cleandoc(group.help))
            walk(group.typer_instance)

    walk(root)


_compose()
_escape_markup(app)


def main() -> None:
    """Console entry point: PairforgeError becomes `error: ...` and exit code 2.

    OSErrors of writes (disk full, read-only file system, no permission) that no command turned
    into a PairforgeError get the same treatment: they name the file and the fix, no traceback.
    """
    from pairforge.io import WRITE_ERRNOS, os_error_reason

    try:
        app()
    except PairforgeError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        reason, fix = os_error_reason(err)
        typer.echo(
            f"error: {err.filename or 'a file'}: cannot be written ({reason}); {fix}.", err=True
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
