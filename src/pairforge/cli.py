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


_compose()


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
