"""The files of `seg suggest` for people: the contact sheet, the export of picked tiles for a
labeling tool, and `pairforge seg import-labels`, which writes the labeled tiles back.

Export (DIR): DIR/images/<name>.tif, the tile at source resolution in physical units (C, t, t)
float32; DIR/masks/<name>.png, the mask template: every pixel holds the FILL id, which means
"unlabeled" (the dataset's ignore_index when it declares one, else 255, or 65535 when 255 is a
class id; uint8 PNG, 16-bit when the ids need it); DIR/tiles.json: for each tile its name,
source sample id, y, x (source px, top-left), tile size, plus the class ids and the fill.
<name> is "<sample id>_y<y>_x<x>".

Import: every mask of tiles.json must be (t, t) class ids from dataset.yaml (or FILL, only when
the dataset declares an ignore_index: those pixels stay unlabeled), its tile inside its
measurement, and not the untouched template. All are checked before anything is written; then
each tile's ids are written into the sample's mask file at (y, x) (a sample without a mask gets
one that is ignore_index everywhere else). DIR/budget.json is the label budget of the head's
tiles followed by the imported ones (`pairforge.data.budget.budget_from_tiles`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, atomic_write_json, ensure_writable_dir

TILES_FILE = "tiles.json"
BUDGET_FILE = "budget.json"
SHEET_COLUMNS = 4  # picks per row of the contact sheet (each: image | uncertainty)
SHEET_MAX = 16


def tile_name(sample_id: str, y: int, x: int) -> str:
    return f"{sample_id}_y{y}_x{x}"


def fill_id(spec) -> int:
    """The template's 'unlabeled' id: ignore_index, else 255 (65535 when 255 is a class id)."""
    if spec.ignore_index is not None:
        return int(spec.ignore_index)
    return 255 if 255 not in {c.id for c in spec.classes} else 65535


def save_contact_sheet(path: Path, ds, result: dict) -> Path:
    """Top picks (at most 16): first image channel (gray, 1..99th percentile of the tile) beside
    the tile's JS map (magma, 0..the largest value over all shown picks); captions: rank,
    sample, y / x and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pairforge.viz import colorize_channel

    rows = result["suggestions"][:SHEET_MAX]
    maps = result["maps"][: len(rows)]
    top = float(maps.max()) if maps.size and maps.max() > 0 else 1.0
    columns = min(SHEET_COLUMNS, len(rows))
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, 2 * columns, figsize=(4.4 * columns, 2.5 * lines),
                             squeeze=False)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(rows):
        t = row["tile_size"]
        channel = ds.read_image(row["sample_id"])[
            0, row["y"] : row["y"] + t, row["x"] : row["x"] + t
        ]
        lo, hi = np.percentile(channel, [1, 99])
        ax_image, ax_map = (
            axes[i // columns, 2 * (i % columns)],
            axes[i // columns, 2 * (i % columns) + 1],
        )
        ax_image.imshow(colorize_channel(channel, lo, hi, "gray"), interpolation="nearest")
        ax_map.imshow(colorize_channel(maps[i], 0.0, top, "magma"), interpolation="nearest")
        ax_image.set_title(f"#{row['rank']} {row['sample_id']} y{row['y']} x{row['x']}", fontsize=8)
        ax_map.set_title(f"JS {row['uncertainty']:.3g}, score {row['score']:.3f}", fontsize=8)
    fig.suptitle(f"tiles to label next (JS map 0..{top:.3g} nats)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _write_mask(path: Path, ids: np.ndarray) -> None:
    from PIL import Image

    dtype = np.uint8 if int(ids.max(initial=0)) < 256 else np.uint16
    if path.suffix.lower() == ".png":
        atomic_write(path, lambda tmp: Image.fromarray(ids.astype(dtype)).save(tmp, format="PNG"))
    elif path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        atomic_write(path, lambda tmp: tifffile.imwrite(tmp, ids.astype(dtype)))
    else:

        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.save would append .npy to the name
                np.save(handle, ids.astype(dtype))

        atomic_write(path, save_npy)


def export_tiles(ds, result: dict, folder: Path, record: dict) -> Path:
    """DIR/images, DIR/masks (templates of FILL) and DIR/tiles.json (module docstring)."""
    import tifffile

    fill = fill_id(ds.spec)
    for sub in ("images", "masks"):
        ensure_writable_dir(folder / sub, "export folder")
    entries = []
    for row in result["suggestions"]:
        sample_id, y, x, t = row["sample_id"], row["y"], row["x"], row["tile_size"]
        name = tile_name(sample_id, y, x)
        tile = np.ascontiguousarray(ds.read_image(sample_id)[:, y : y + t, x : x + t], np.float32)
        atomic_write(folder / "images" / f"{name}.tif",
                     lambda tmp, a=tile: tifffile.imwrite(tmp, a, photometric="minisblack"))  # fmt: skip
        _write_mask(folder / "masks" / f"{name}.png", np.full((t, t), fill, np.int64))
        entries.append({"name": name, "rank": row["rank"], "sample_id": sample_id, "y": y, "x": x,
                        "tile_size": t, "image": f"images/{name}.tif",
                        "mask": f"masks/{name}.png"})  # fmt: skip
    atomic_write_json(folder / TILES_FILE, {
        "dataset": ds.spec.name, "split": result["split"], "tile_size": result["tile_size"],
        "fill_id": fill,
        "fill_meaning": "unlabeled (the dataset's ignore_index)" if ds.spec.ignore_index
        is not None else "unlabeled (not a class id: every pixel must be labeled)",
        "classes": [{"id": c.id, "name": c.name} for c in ds.spec.classes],
        "head": record["head"], "tiles": entries,
    })  # fmt: skip
    return folder


def _read_tiles(folder: Path) -> dict:
    path = folder / TILES_FILE
    if not path.exists():
        raise PairforgeError(
            f"{path}: not found; DIR must be a folder written by `pairforge seg suggest --export`"
        )
    try:
        meta = json.loads(path.read_text())
        for entry in meta["tiles"]:
            for key in ("y", "x", "tile_size"):
                entry[key] = int(entry[key])
            entry["sample_id"], entry["mask"] = str(entry["sample_id"]), str(entry["mask"])
        int(meta["fill_id"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise PairforgeError(
            f"{path}: not a valid tile list ({type(err).__name__}: {err}); re-export it with "
            "`pairforge seg suggest --export`"
        ) from None
    return meta


def _checked_tile(ds, folder: Path, entry: dict, fill: int) -> np.ndarray:
    """The labeled tile's raw ids (t, t), checked (module docstring)."""
    from pairforge.data.files import read_array

    sample_id, y, x, t = entry["sample_id"], entry["y"], entry["x"], entry["tile_size"]
    path = folder / entry["mask"]
    if sample_id not in ds.ids():
        raise PairforgeError(
            f"{folder / TILES_FILE}: tile {entry.get('name')!r} comes from sample {sample_id!r}, "
            f"which {ds.root} does not list; pass the --data the tiles were exported from"
        )
    height, width = ds.image_size(sample_id)
    if y < 0 or x < 0 or y + t > height or x + t > width:
        raise PairforgeError(
            f"{folder / TILES_FILE}: tile {entry.get('name')!r} at y {y}, x {x} ({t} px) lies "
            f"outside sample {sample_id!r} ({height} x {width} px); fix its y / x or re-export"
        )
    if not path.exists():
        raise PairforgeError(f"{path}: mask not found; label the template and save it there")
    raw = read_array(path)
    if raw.ndim == 3:
        raise PairforgeError(
            f"{path}: a color image (shape {raw.shape}); save the mask as one channel of class ids"
        )
    if raw.shape != (t, t):
        raise PairforgeError(
            f"{path}: mask is {raw.shape[1] if raw.ndim == 2 else '?'} x {raw.shape[0]} px "
            f"(W x H) but the tile is {t} x {t} px; save it at the exported tile's size"
        )
    raw = raw.astype(np.int64)
    if (raw == fill).all():
        raise PairforgeError(
            f"{path}: still the empty template (every pixel {fill}, unlabeled); label it, or "
            "remove its entry from tiles.json to skip the tile"
        )
    allowed = {c.id for c in ds.spec.classes}
    if ds.spec.ignore_index is not None:
        allowed.add(int(ds.spec.ignore_index))
    values, counts = np.unique(raw, return_counts=True)
    unknown = [(int(v), int(c)) for v, c in zip(values, counts) if int(v) not in allowed]
    if unknown:
        listing = ", ".join(f"{v} ({c} px)" for v, c in unknown[:10])
        left = (
            " (the template's unlabeled fill: label every pixel)" if fill in dict(unknown) else ""
        )
        raise PairforgeError(
            f"{path}: class ids {listing}{left} are not in {ds.root}/dataset.yaml (ids "
            f"{sorted(c.id for c in ds.spec.classes)}); paint only those ids"
        )
    return raw


def import_labels(folder: str | Path, data: str | Path, echo=print) -> dict:
    """Check every labeled tile of DIR, then write them into the masks of `data` (module
    docstring). Returns {"tiles", "samples", "budget"} (budget: LabelBudget.to_dict() or None)."""
    from pairforge.data.budget import LabelBudget, budget_from_tiles
    from pairforge.data.dataset import load_dataset
    from pairforge.data.files import read_array
    from pairforge.data.layout import MASK_DIR

    folder = Path(folder)
    meta = _read_tiles(folder)
    ds = load_dataset(data)
    if meta.get("dataset") != ds.spec.name:
        raise PairforgeError(
            f"{folder / TILES_FILE}: tiles of dataset {meta.get('dataset')!r}, but --data {data} "
            f"is {ds.spec.name!r}; pass the dataset they were exported from"
        )
    if ds.spec.mask_encoding == "color":
        raise PairforgeError(
            f"{data}: masks are stored as colors (mask_encoding: color); import-labels writes "
            "class ids: convert the dataset with `pairforge data import` to id masks first"
        )
    fill = int(meta["fill_id"])
    labeled = [(entry, _checked_tile(ds, folder, entry, fill)) for entry in meta["tiles"]]
    by_sample: dict[str, list] = {}
    for entry, raw in labeled:
        by_sample.setdefault(entry["sample_id"], []).append((entry, raw))
    for sample_id, items in by_sample.items():
        path = ds.mask_path(sample_id)
        if path is None:
            if ds.spec.ignore_index is None:
                raise PairforgeError(
                    f"{data}: sample {sample_id!r} has no mask, and dataset.yaml declares no "
                    "ignore_index to mark its other pixels unlabeled; set ignore_index (e.g. 255)"
                )
            path = ds.root / MASK_DIR / f"{sample_id}.png"
            full = np.full(ds.image_size(sample_id), int(ds.spec.ignore_index), np.int64)
        else:
            full = read_array(path).astype(np.int64)
        for entry, raw in items:
            y, x, t = entry["y"], entry["x"], entry["tile_size"]
            full[y : y + t, x : x + t] = raw
        _write_mask(path, full)
    tiles = [(e["sample_id"], e["y"], e["x"]) for e, _ in labeled]
    budget = None
    head_budget = (meta.get("head") or {}).get("label_budget")
    if head_budget is not None:
        start = LabelBudget.from_dict(head_budget, f"{folder / TILES_FILE} head label_budget")
        fresh = [tile for tile in tiles if tile not in set(start.tiles)]
        budget = budget_from_tiles(load_dataset(data), [*start.tiles, *fresh], start.tile_size,
                                   start.split, start.seed, start.select_every).to_dict()  # fmt: skip
        atomic_write_json(folder / BUDGET_FILE, budget)
    echo(
        f"wrote {len(labeled)} labeled tiles into the masks of {len(by_sample)} samples of {data}"
        + (
            ""
            if budget is None
            else f"; budget of the head's + these tiles: {folder / BUDGET_FILE} (fit the next "
            f"head on it: pairforge seg fit ... --labels {folder / BUDGET_FILE})"
        )
    )
    return {"tiles": tiles, "samples": sorted(by_sample), "budget": budget}


def import_labels_command(
    folder: Path = typer.Argument(..., help="Folder written by seg suggest --export, labeled."),
    data: Path = typer.Option(..., "--data", help="Dataset whose masks receive the tiles."),
) -> None:
    """Write labeled tiles back into a dataset's masks (checks sizes, class ids and tile
    positions first; refuses untouched templates).

    Example:

      pairforge seg import-labels label/g8 --data data/grains
    """
    import_labels(folder, data, echo=typer.echo)
