"""`pairforge seg suggest`: rank the unlabeled tiles of a dataset by which to label next.

Candidates: the non-overlapping grid tiles (the head budget's tile size, source px, fully inside
their measurement) of every sample of the label split, minus the tiles of the head's budget;
samples without a mask file count too (they are what is left to label). No mask is read.

Uncertainty of a tile: the mean Jensen-Shannon disagreement (nats, `seg.ensemble`) of the
head's ensemble over the tile, the tile segmented on its own at the head's scale (normalized
with the head's normalizer, area-downsampled by crop_size / resolution). Diversity: each tile's
diffusion features (the head's extractor on the same tile, mean-pooled to one D-vector,
standardized per feature over candidates and budget tiles) give a distance to the tiles already
chosen (the budget's, then each pick). Greedy, k-center style: pick by
  score = (1 - diversity) * u + diversity * d
u = uncertainty min-max normalized over the candidates, d = distance to the nearest chosen tile
divided by the largest such distance before the first pick (clipped to 1). With diversity > 0 a
tile at distance 0 (features identical to a chosen tile: a duplicate) is never picked while any
other is left. Ties go to the earlier candidate (split order, row-major): deterministic.

OUT/suggest.json (head path, sha256 and label budget; settings; the ranked list), OUT/suggest.csv
(the list) and OUT/contact_sheet.png (each pick's first image channel beside its uncertainty
map); `--export DIR` writes the picks for labeling (`pairforge.seg.suggest_io`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_json, atomic_write_text, ensure_writable_dir

POOLINGS = ("head", "image")
CSV_COLUMNS = ("rank", "sample_id", "y", "x", "tile_size", "uncertainty", "distance", "score")
# Distance (fraction of the largest) under which two tiles count as the same: float noise of
# equal features (batch composition changes the last bits of a conv).
DUPLICATE_TOLERANCE = 1e-4


@dataclass
class TileStats:
    """Per tile: js (N,) mean JS nats; pooled (N, D) features; maps (N, r, r) JS at model px."""

    js: np.ndarray
    pooled: np.ndarray
    maps: np.ndarray


def candidate_tiles(ds, split: str, tile_size: int, budget=None) -> list[tuple[str, int, int]]:
    """Grid tiles of every sample of `split` not overlapping a tile of `budget` (image sizes
    only: no mask is read). PairforgeError when none is left."""
    taken: dict[str, list[tuple[int, int]]] = {}
    if budget is not None:
        for sample_id, y, x in budget.tiles:
            taken.setdefault(sample_id, []).append((y, x))
    size = budget.tile_size if budget is not None else tile_size
    tiles = []
    for sample_id in ds.ids(split):
        height, width = ds.image_size(sample_id)
        for y in range(0, height - tile_size + 1, tile_size):
            for x in range(0, width - tile_size + 1, tile_size):
                overlaps = any(
                    y < by + size and by < y + tile_size and x < bx + size and bx < x + tile_size
                    for by, bx in taken.get(sample_id, ())
                )
                if not overlaps:
                    tiles.append((sample_id, y, x))
    if not tiles:
        raise PairforgeError(
            f"{ds.root}: split {split!r} has no {tile_size} px tile outside the head's label "
            f"budget (samples: {len(ds.ids(split))}); nothing is left to suggest, or pass "
            "--split with another split"
        )
    return tiles


def model_tiles(head, ds, tiles, tile_size: int) -> torch.Tensor:
    """The `tile_size` px tiles at the head's scale: normalized, area-downsampled by
    crop_size / resolution, (N, C, r, r) float32."""
    from pairforge.data.views import downsample_image

    normalizer = head.normalizer
    if normalizer is None:
        raise PairforgeError("the head stores no normalizer; refit it with `pairforge seg fit`")
    out: list[torch.Tensor | None] = [None] * len(tiles)
    by_id: dict[str, list[int]] = {}
    for position, (sample_id, _, _) in enumerate(tiles):
        by_id.setdefault(sample_id, []).append(position)
    for sample_id, positions in by_id.items():  # one measurement in memory at a time
        image = ds.read_image(sample_id)
        for position in positions:
            _, y, x = tiles[position]
            t = tile_size
            crop = np.ascontiguousarray(normalizer.encode(image[:, y : y + t, x : x + t]))
            out[position] = downsample_image(torch.from_numpy(crop).float(), head.scale)
    return torch.stack(out)


def tile_stats(head, images: torch.Tensor, pool_features: str = "head", batch_size: int = 8):
    """TileStats of model-scale tiles (N, C, r, r): one feature pass gives both the ensemble's
    JS map and the mean-pooled features ("image": the tile itself area-pooled to 4 x 4 px per
    channel instead, a feature-free distance)."""
    js, pooled, maps = [], [], []
    for first in range(0, images.shape[0], batch_size):
        batch = images[first : first + batch_size]
        features = head.extractor.extract(batch)
        prediction = head.ensemble.segment(features)
        maps.append(prediction.js)
        js.append(prediction.js.mean(dim=(1, 2)))
        if pool_features == "head":
            pooled.append(features.mean(dim=(2, 3)))
        else:
            pooled.append(torch.nn.functional.adaptive_avg_pool2d(batch, 4).flatten(1))
    cat = lambda parts: torch.cat(parts).double().numpy()  # noqa: E731
    return TileStats(cat(js), cat(pooled), cat(maps))


def greedy_picks(uncertainty, features, anchors, n: int, diversity: float) -> list[dict]:
    """Indices of `n` picks among N candidates (see the module docstring).

    uncertainty (N,); features (N, D) and anchors (A, D) pooled features of the candidates and
    of the already-labeled tiles (A may be 0). Returns [{"index", "distance", "score"}] in pick
    order; distance is d at the time of the pick (None when nothing was chosen yet).
    """
    u = np.asarray(uncertainty, np.float64)
    span = u.max() - u.min()
    u_norm = (u - u.min()) / span if span > 0 else np.zeros_like(u)
    everything = np.concatenate([features, anchors]) if len(anchors) else features
    std = everything.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    z = (features - everything.mean(axis=0)) / scale
    za = (anchors - everything.mean(axis=0)) / scale if len(anchors) else z[:0]
    nearest = np.full(len(u), np.inf)
    for anchor in za:
        nearest = np.minimum(nearest, np.linalg.norm(z - anchor, axis=1))
    reference = None
    available = np.ones(len(u), bool)
    picks = []
    for _ in range(n):
        if np.isfinite(nearest).any() and reference is None:
            reference = float(nearest[np.isfinite(nearest)].max()) or 1.0
        d = np.ones_like(u) if reference is None else np.minimum(nearest / reference, 1.0)
        score = (1.0 - diversity) * u_norm + diversity * d
        score = np.where(available, score, -np.inf)
        if diversity > 0:
            duplicate = available & (d <= DUPLICATE_TOLERANCE)
            if (available & ~duplicate).any():
                score = np.where(duplicate, -np.inf, score)
        index = int(np.argmax(score))  # first maximum: earlier candidate wins ties
        picks.append({"index": index, "distance": None if reference is None else float(d[index]),
                      "score": float(score[index])})  # fmt: skip
        available[index] = False
        nearest = np.minimum(nearest, np.linalg.norm(z - z[index], axis=1))
    return picks


def check_settings(n: int, diversity: float, pool_features: str) -> None:
    if n < 1:
        raise PairforgeError(f"--n {n}: ask for at least 1 tile to label")
    if not 0.0 <= diversity <= 1.0:  # also false for nan
        raise PairforgeError(
            f"--diversity {diversity}: give a weight in [0, 1] (0: uncertainty only, 1: feature "
            "distance only; default 0.5)"
        )
    if pool_features not in POOLINGS:
        raise PairforgeError(
            f"--pool-features {pool_features!r}: use 'head' (mean-pooled diffusion features of "
            "the head's extractor, default) or 'image' (the tile's pixels pooled to 4 x 4)"
        )


def suggest_tiles(head, ds, n=8, split=None, diversity=0.5, pool_features="head") -> dict:
    """The ranked suggestions of `head` on a loaded dataset (reads images only). Returns
    {"split", "tile_size", "candidates", "suggestions": [...], "maps": (n, r, r) JS,
    "tiles": the picked (id, y, x)}."""
    check_settings(n, diversity, pool_features)
    budget = head.label_budget
    if budget is None:
        raise PairforgeError(
            "the head records no label budget (fitted before budgets existed), so its labeled "
            "tiles are unknown; refit it with `pairforge seg fit --labels N`"
        )
    if budget.dataset != ds.spec.name:
        raise PairforgeError(
            f"the head's label budget is of dataset {budget.dataset!r} but --data {ds.root} is "
            f"{ds.spec.name!r}; pass the dataset the head was fitted on"
        )
    split = split or budget.split
    if split not in ds.spec.splits:
        raise PairforgeError(
            f"--split {split!r}: {ds.root} has splits {sorted(ds.spec.splits)}; pick one of them"
        )
    t = budget.tile_size
    crop, resolution = head.info.crop_size or 1, head.info.resolution or 1
    if (t * resolution) % crop:
        raise PairforgeError(
            f"the head's {t} px label tiles are not a whole number of model px at its scale "
            f"({crop} source px per {resolution} model px); refit the head with --label-tile a "
            f"multiple of {crop}"
        )
    tiles = candidate_tiles(ds, split, t, budget)
    if n > len(tiles):
        raise PairforgeError(
            f"--n {n}: split {split!r} has only {len(tiles)} unlabeled tiles of {t} px; ask for "
            f"at most {len(tiles)}"
        )
    stats = tile_stats(head, model_tiles(head, ds, tiles, t), pool_features)
    anchors = tile_stats(head, model_tiles(head, ds, list(budget.tiles), t), pool_features).pooled
    picks = greedy_picks(stats.js, stats.pooled, anchors, n, diversity)
    suggestions = [
        {"rank": rank, "sample_id": tiles[p["index"]][0], "y": tiles[p["index"]][1],
         "x": tiles[p["index"]][2], "tile_size": t, "uncertainty": float(stats.js[p["index"]]),
         "distance": p["distance"], "score": p["score"]}
        for rank, p in enumerate(picks, start=1)
    ]  # fmt: skip
    return {
        "split": split,
        "tile_size": t,
        "candidates": len(tiles),
        "suggestions": suggestions,
        "maps": stats.maps[[p["index"] for p in picks]],
        "tiles": [tiles[p["index"]] for p in picks],
    }


def write_suggestions(out: Path, result: dict, record: dict) -> None:
    """OUT/suggest.json (record + the ranked list) and OUT/suggest.csv."""
    ensure_writable_dir(out, "suggestion folder")
    atomic_write_json(out / "suggest.json", {**record, "suggestions": result["suggestions"]})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in result["suggestions"]:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    atomic_write_text(out / "suggest.csv", buffer.getvalue())


def run_suggest(head, head_path, data, out, *, n=8, split=None, diversity=0.5,
                pool_features="head", export=None, echo=print) -> dict[str, Any]:  # fmt: skip
    """Suggest, write OUT (and --export DIR); returns suggest.json's content."""
    from pairforge.core.dataset_writer import module_sha256
    from pairforge.data.dataset import load_dataset
    from pairforge.seg.suggest_io import export_tiles, save_contact_sheet

    ds = load_dataset(data)
    result = suggest_tiles(head, ds, n, split, diversity, pool_features)
    budget = head.label_budget
    head_entry = {"path": None if head_path is None else str(Path(head_path).resolve()),
                  "sha256": module_sha256(head.ensemble), "label_budget": budget.to_dict()}  # fmt: skip
    record = {
        "head": head_entry,
        "data": str(Path(data).resolve()),
        "dataset": ds.spec.name,
        "split": result["split"],
        "tile_size": result["tile_size"],
        "candidates": result["candidates"],
        "settings": {
            "n": n,
            "diversity": diversity,
            "pool_features": pool_features,
            "uncertainty": "js (mean over the tile)",
        },  # fmt: skip
        "labels": budget.summary(),
        "reads_masks": False,
    }
    out = Path(out)
    write_suggestions(out, result, record)
    save_contact_sheet(out / "contact_sheet.png", ds, result)
    if export is not None:
        export_tiles(ds, result, Path(export), record)
    top = result["suggestions"][0]
    echo(
        f"{len(result['suggestions'])} of {result['candidates']} unlabeled {result['tile_size']} px "
        f"tiles suggested in {out} (top: {top['sample_id']} y {top['y']} x {top['x']}, mean JS "
        f"{top['uncertainty']:.4g})" + ("" if export is None else f"; exported to {export}")
    )
    return {**record, "suggestions": result["suggestions"]}


# ---------------------------------------------------------------------------------------------
# The commands (registered as `pairforge seg suggest` / `seg import-labels` with `register`)
# ---------------------------------------------------------------------------------------------
def suggest_command(
    head_dir: Path = typer.Argument(..., help="Head folder (pairforge seg fit)."),
    data: Path = typer.Option(..., "--data", help="Dataset the head's budget was drawn from."),
    out: Path = typer.Option(..., "--out", help="Folder for suggest.json / .csv / contact sheet."),
    n: int = typer.Option(8, "--n", help="Tiles to suggest."),
    split: str = typer.Option(
        None, "--split", help="Split to suggest from (default: the budget's)."
    ),
    diversity: float = typer.Option(
        0.5, "--diversity", help="Weight of feature distance vs uncertainty, in [0, 1]."
    ),
    pool_features: str = typer.Option(
        "head", "--pool-features", help="Distance features: head (diffusion) or image (pixels)."
    ),
    export: Path = typer.Option(
        None, "--export", help="Also write the picks as image + empty mask template for labeling."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device of the head."),
) -> None:
    """Rank the tiles outside the head's label budget by ensemble disagreement (mean JS) and
    feature diversity; reads no mask.

    Examples (label the exported tiles in any tool, then import them and fit the next head):

      pairforge seg suggest heads/g8 --data data/grains --out suggest/g8 --n 8 --export label/g8

      pairforge seg import-labels label/g8 --data data/grains

      pairforge seg fit --run runs/image --data data/grains --labels label/g8/budget.json --out heads/g16
    """
    from pairforge.seg.head import SegmentationHead

    check_settings(n, diversity, pool_features)
    head = SegmentationHead.load(head_dir, device=device)
    run_suggest(head, head_dir, data, out, n=n, split=split, diversity=diversity,
                pool_features=pool_features, export=export, echo=typer.echo)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add `suggest` and `import-labels` to a typer app (the seg sub-app)."""
    from pairforge.seg.suggest_io import import_labels_command

    app.command("suggest")(suggest_command)
    app.command("import-labels")(import_labels_command)
