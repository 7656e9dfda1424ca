"""`pairforge data ...`: built-in grain measurements, importers and dataset checks."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from pairforge.errors import PairforgeError

app = typer.Typer(no_args_is_help=True, help="Built-in data, importers and checks.")


class GrainPresetName(str, Enum):
    tiny = "tiny"
    demo = "demo"
    full = "full"


class ImportFormat(str, Enum):
    grain_png = "grain-png"
    grain_txt = "grain-txt"
    color_masks = "color-masks"


@app.command("grains")
def grains(
    out: Path = typer.Argument(..., help="Folder to write the dataset into."),
    preset: GrainPresetName = typer.Option(
        GrainPresetName.demo,
        help="tiny: smoke tests; demo: small, for CPU; full: the real study's layout.",
    ),
    seed: int = typer.Option(0, help="Seed; the same seed gives the same measurements."),
) -> None:
    """Write procedural grinding-tool measurements (intensity + depth, binder/grain/pore masks).

    Example: pairforge data grains data/grains --preset demo --seed 0
    """
    from pairforge.data.check import check_dataset
    from pairforge.data.grains import write_grains_dataset

    path = write_grains_dataset(out, preset=preset.value, seed=seed, progress=True)
    report = check_dataset(path)
    fractions = ", ".join(
        f"{c['name']} {100 * c['pixel_fraction']:.1f} %"
        for c in report["classes"]
        if c["pixel_fraction"] is not None
    )
    typer.echo(f"wrote {report['samples']} measurements to {path} ({fractions})")


@app.command("nuclei")
def nuclei(
    out: Path = typer.Argument(..., help="Folder to write the dataset into."),
    package_dir: Path = typer.Option(
        None, "--package-dir", help="stardist package folder [default: the installed one]."
    ),
) -> None:
    """Write the real fluorescence nuclei image the stardist wheel ships (512 px, nucleus /
    background) as 3 train + 1 test quadrants. Needs `pip install --no-deps stardist==0.9.2`.

    Example: pairforge data nuclei data/nuclei
    """
    from pairforge.data.check import check_dataset
    from pairforge.data.nuclei import write_nuclei_dataset

    path = write_nuclei_dataset(out, package_dir)
    report = check_dataset(path)
    typer.echo(f"wrote {report['samples']} measurements ({report['labeled']} labeled) to {path}")


@app.command("import")
def import_(
    format: ImportFormat = typer.Argument(..., help="Layout of SRC."),
    src: Path = typer.Argument(..., help="Folder with the files to import."),
    out: Path = typer.Argument(..., help="Folder to write the pairforge dataset into."),
    classes: str = typer.Option(
        None, help="Grain targets: value:name pairs, e.g. 0:binder,255:grain."
    ),
    palette: Path = typer.Option(
        None, help="color-masks: YAML/JSON palette, name: [r, g, b] per class."
    ),
    val: str = typer.Option("", help="Comma-separated sample ids for the val split."),
    test: str = typer.Option("", help="Comma-separated sample ids for the test split."),
) -> None:
    """Import an existing layout into the standard format.

    \b
    grain-png:   SRC/{i}_intensity.png, {i}_depth.png, {i}_target.png (target optional)
    grain-txt:   SRC/*intensity.txt, *depth.txt, *target.txt (tab-separated matrices)
    color-masks: SRC/images/*.png|jpg with SRC/masks/*.png colored by --palette
    Example: pairforge data import grain-png raw/ data/grains --test 7
    """
    from pairforge.data.check import check_dataset
    from pairforge.data.importers import import_color_masks, import_grains, parse_class_map

    val_ids = [s for s in val.split(",") if s]
    test_ids = [s for s in test.split(",") if s]
    if format == ImportFormat.color_masks:
        if palette is None:
            raise PairforgeError(
                "color-masks import needs --palette FILE (name: [r, g, b] per class)"
            )
        path = import_color_masks(src, out, palette, val=val_ids, test=test_ids)
    else:
        layout = "png" if format == ImportFormat.grain_png else "txt"
        path = import_grains(src, out, layout, parse_class_map(classes), val=val_ids, test=test_ids)
    report = check_dataset(path)
    typer.echo(f"imported {report['samples']} samples ({report['labeled']} labeled) into {path}")


@app.command("check")
def check(
    path: Path = typer.Argument(..., help="Dataset folder (with dataset.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Validate a dataset and summarize it; exit code 1 if any problem is found.

    Example: pairforge data check data/grains --json
    """
    from pairforge.data.check import check_dataset, format_report

    report = check_dataset(path)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if not report["ok"]:
        raise typer.Exit(1)
