"""Label budgets: which labeled tiles a run may read masks from, chosen by a seed.

A budget is part of the data: `pairforge.data.budget_view.BudgetedDataset` is a view of a dataset in which only the
budget's tiles carry masks (every other pixel reads as unlabeled, `IGNORE_INDEX`), so any code
handed the view can only touch the labels the budget allows. Images stay whole: an image-only
model may see every image; only masks are budgeted.

How a budget is drawn (`make_budget`): the candidate tiles are the non-overlapping
`tile_size` grid cells, fully inside their measurement, of every sample of the label split that
has a mask file, in split order and row-major. One seeded permutation orders them; the budget
of size B is the first B tiles of that order (tiles whose pixels are all unlabeled are skipped
when the dataset declares an `ignore_index`). So budgets of one seed are nested (the 8-tile
budget lies inside the 32-tile one), and the choice reads no mask values: changing any label
outside the budget, or any test label, leaves the choice bit-identical.

Selection inside the budget: every `select_every`-th drawn tile (positions k, 2k, 3k, ... in
draw order, 1-based) is a selection tile (early stopping, best epoch); the others are fit
tiles. Selection tiles are nested across budgets too. A budget with no selection tile (fewer
than k tiles) means a fixed schedule: no early stopping, the last epoch is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError

# Stream id of the budget permutation, so it shares no draws with other uses of the same seed.
BUDGET_STREAM = 0xB0D6E7
DEFAULT_SELECT_EVERY = 4
ALL = "all"

Tile = tuple[str, int, int]  # (sample id, y, x) of a tile's top-left corner, full-resolution px


def parse_labels(text: str | int | None, flag: str = "--labels") -> int | None:
    """`--labels` text -> number of tiles, None for 'all'. PairforgeError naming the flag."""
    if text is None or (isinstance(text, str) and text.strip().lower() == ALL):
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise PairforgeError(
            f"{flag} {text!r}: give a number of labeled tiles (e.g. 8) or 'all'"
        ) from None
    if value < 1:
        raise PairforgeError(f"{flag} {value}: give at least 1 labeled tile, or 'all'")
    return value


def parse_labels_choice(text: str | int | None, flag: str = "--labels") -> int | None | Path:
    """`--labels` text -> number of tiles, None for 'all', or the Path of a budget file (text
    ending in .json: a budget written by `seg import-labels`, a head or a run; read with
    `load_budget_file`)."""
    if isinstance(text, str) and text.strip().lower().endswith(".json"):
        return Path(text.strip())
    return parse_labels(text, flag)


@dataclass(frozen=True)
class LabelBudget:
    """The labeled tiles one run may read masks from.

    dataset: the dataset's name; split: the label split the tiles come from; tile_size: tile
    side in full-resolution px; seed: the draw's seed; size: requested tiles (None: all);
    pool: candidate tiles; tiles: the chosen tiles in draw order; select_every: k (see the
    module docstring; 0: no selection tiles).
    """

    dataset: str
    split: str
    tile_size: int
    seed: int
    size: int | None
    pool: int
    tiles: tuple[Tile, ...]
    select_every: int = DEFAULT_SELECT_EVERY
    _tile_set: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_tile_set", frozenset(self.tiles))

    # -- parts ------------------------------------------------------------------------------
    def is_select(self, position: int) -> bool:
        """Whether the tile drawn at 0-based `position` is a selection tile."""
        k = self.select_every
        return k > 0 and (position + 1) % k == 0

    @property
    def fit_tiles(self) -> list[Tile]:
        return [t for i, t in enumerate(self.tiles) if not self.is_select(i)]

    @property
    def select_tiles(self) -> list[Tile]:
        return [t for i, t in enumerate(self.tiles) if self.is_select(i)]

    def part(self, name: str) -> list[Tile]:
        """Tiles of one part: "fit", "select" or "all"."""
        if name == "fit":
            return self.fit_tiles
        if name == "select":
            return self.select_tiles
        if name == "all":
            return list(self.tiles)
        raise PairforgeError(f"budget part {name!r}: use fit, select or all")

    @property
    def ids(self) -> list[str]:
        """Samples with at least one budget tile, in first-drawn order."""
        return list(dict.fromkeys(t[0] for t in self.tiles))

    @property
    def labeled_pixels(self) -> int:
        """Labeled full-resolution pixels the budget lets a run read."""
        return len(self.tiles) * self.tile_size**2

    @property
    def label(self) -> str:
        """Short name: '8' or 'all' (the budget axis of a plot or table)."""
        return ALL if self.size is None else str(self.size)

    def describe(self) -> str:
        """One line, e.g. "8 labeled tiles of 128 px (6 fit + 2 select) of split 'train' of
        'demo-grains', seed 0"."""
        select = len(self.select_tiles)
        parts = f"{len(self.tiles) - select} fit + {select} select" if select else "no selection"
        return (
            f"{len(self.tiles)} labeled tiles of {self.tile_size} px ({parts}) of split "
            f"{self.split!r} of {self.dataset!r}, seed {self.seed}"
        )

    @property
    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of the budget (dataset, split, tiles in draw order,
        selection rule): two results with the same fingerprint read the same labels."""
        import hashlib
        import json

        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Counts for a result table: tiles, fit, select, pixels, seed, split, tile size, and
        the fingerprint of the exact tiles."""
        return {
            "budget": self.label,
            "tiles": len(self.tiles),
            "fit_tiles": len(self.fit_tiles),
            "select_tiles": len(self.select_tiles),
            "pixels": self.labeled_pixels,
            "tile_size": self.tile_size,
            "seed": self.seed,
            "split": self.split,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
        }

    # -- containment ------------------------------------------------------------------------
    def covers(self, other: LabelBudget) -> bool:
        """Whether every pixel `other` may read lies inside this budget's tiles."""
        if other.dataset != self.dataset:
            return False
        if other.tile_size == self.tile_size:
            return other._tile_set <= self._tile_set
        return all(self.covers_tile(tile, other.tile_size) for tile in other.tiles)

    def covers_tile(self, tile: Tile, size: int) -> bool:
        """Whether the `size` px tile at `tile` (same dataset) lies inside this budget's tiles."""
        sample_id, y, x = tile
        t, end_y, end_x = self.tile_size, y + size, x + size
        if y % t or x % t or end_y % t or end_x % t:
            return False  # not aligned with this budget's grid: some pixels outside it
        return all(
            (sample_id, cy, cx) in self._tile_set
            for cy in range(y, end_y, t)
            for cx in range(x, end_x, t)
        )

    # -- storage ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "tile_size": self.tile_size,
            "seed": self.seed,
            "size": self.size,
            "pool": self.pool,
            "select_every": self.select_every,
            "tiles": [list(t) for t in self.tiles],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "label budget") -> LabelBudget:
        try:
            return cls(
                dataset=str(data["dataset"]),
                split=str(data["split"]),
                tile_size=int(data["tile_size"]),
                seed=int(data["seed"]),
                size=None if data["size"] is None else int(data["size"]),
                pool=int(data["pool"]),
                tiles=tuple((str(i), int(y), int(x)) for i, y, x in data["tiles"]),
                select_every=int(data.get("select_every", DEFAULT_SELECT_EVERY)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PairforgeError(
                f"{where}: not a valid label budget ({type(err).__name__}: {err}); it is written "
                "by pairforge (train, seg fit, generate); re-create the file"
            ) from None


def budget_from_record(value: Any, where: str) -> LabelBudget | None:
    """A budget stored in a record (dict) or None (the record's labels are not budgeted)."""
    return None if value is None else LabelBudget.from_dict(value, where)


def require_covered(
    inner: LabelBudget | None, outer: LabelBudget, what: str, fix: str = ""
) -> None:
    """PairforgeError unless `what` (which read the masks of `inner`; None: every mask of its
    split, no budget) touched only labels inside `outer`. The message names both."""
    if inner is not None and outer.covers(inner):
        return
    used = (
        "every mask of its training split (no label budget)"
        if inner is None
        else f"the budget {inner.describe()}"
    )
    outside = "" if inner is None else f" ({_outside_count(inner, outer)} of its tiles outside)"
    raise PairforgeError(
        f"{what} read {used}{outside}, which is not inside the budget it is evaluated at: "
        f"{outer.describe()}; "
        + (fix or "train it on that budget (same --labels, --label-seed and tile size)")
    )


def _outside_count(inner: LabelBudget, outer: LabelBudget) -> int:
    if inner.dataset != outer.dataset:
        return len(inner.tiles)
    return sum(not outer.covers_tile(tile, inner.tile_size) for tile in inner.tiles)


# ---------------------------------------------------------------------------------------------
# Drawing a budget
# ---------------------------------------------------------------------------------------------
def candidate_tiles(ds, split: str, tile_size: int) -> list[Tile]:
    """Non-overlapping `tile_size` grid cells, fully inside their sample, of the samples of
    `split` that have a mask file (split order, row-major). Reads image sizes, no mask values."""
    ids = [i for i in ds.ids(split) if ds.has_mask(i)]
    if not ids:
        raise PairforgeError(
            f"{ds.root}: split {split!r} has no labeled samples (splits: "
            f"{sorted(ds.spec.splits) or 'none'}); label some, or pass --label-split with a "
            "labeled split"
        )
    tiles: list[Tile] = []
    for sample_id in ids:
        height, width = ds.image_size(sample_id)
        if min(height, width) < tile_size:  # its labels could never be read: say so
            raise PairforgeError(
                f"{ds.root}: sample {sample_id!r} of split {split!r} is {height} x {width} px, "
                f"smaller than the {tile_size} px tiles of the label budget; remove it from the "
                "split or use smaller tiles (--label-tile / data.label_tile)"
            )
        for y in range(0, height - tile_size + 1, tile_size):
            for x in range(0, width - tile_size + 1, tile_size):
                tiles.append((sample_id, y, x))
    return tiles


def make_budget(
    ds,
    size: int | None,
    seed: int,
    tile_size: int,
    split: str = "train",
    select_every: int = DEFAULT_SELECT_EVERY,
) -> LabelBudget:
    """Draw the budget of `size` tiles (None: all) of seed `seed` (see the module docstring).

    PairforgeError when the split has fewer labeled tiles than `size`, naming how many it has.
    """
    if tile_size < 1:
        raise PairforgeError(f"label tile size {tile_size}: must be >= 1 px")
    pool = candidate_tiles(ds, split, tile_size)
    if size is not None and size > len(pool):
        raise PairforgeError(
            f"--labels {size}: split {split!r} of {ds.root} has {len(pool)} labeled tiles of "
            f"{tile_size} px; ask for at most {len(pool)}, or 'all'"
        )
    order = np.random.default_rng(np.random.SeedSequence([int(seed), BUDGET_STREAM])).permutation(
        len(pool)
    )
    wanted = len(pool) if size is None else size
    chosen: list[Tile] = []
    may_be_empty = ds.spec.ignore_index is not None  # else every mask pixel is labeled
    for index in order:
        if len(chosen) == wanted:
            break
        tile = pool[int(index)]
        if may_be_empty and not _has_labeled_pixel(ds, tile, tile_size):
            continue
        chosen.append(tile)
    if size is not None and len(chosen) < size:
        raise PairforgeError(
            f"--labels {size}: split {split!r} of {ds.root} has only {len(chosen)} tiles of "
            f"{tile_size} px with labeled pixels; ask for at most {len(chosen)}, or 'all'"
        )
    return LabelBudget(
        dataset=ds.spec.name,
        split=split,
        tile_size=tile_size,
        seed=int(seed),
        size=size,
        pool=len(pool),
        tiles=tuple(chosen),
        select_every=select_every,
    )


def _has_labeled_pixel(ds, tile: Tile, tile_size: int) -> bool:
    sample_id, y, x = tile
    mask = ds.read_mask(sample_id)
    return bool((mask[y : y + tile_size, x : x + tile_size] != IGNORE_INDEX).any())


def budget_from_tiles(
    ds,
    tiles,
    tile_size: int,
    split: str = "train",
    seed: int = 0,
    select_every: int = DEFAULT_SELECT_EVERY,
) -> LabelBudget:
    """The budget of an explicit tile list (e.g. a head's budget plus the tiles `seg suggest`
    picked and a person labeled), in the order given: that order decides the selection tiles
    (every `select_every`-th), so appending tiles keeps the earlier ones' parts. `seed` is a
    record only (the seed of the budget the list started from); size = len(tiles).

    Every tile must be a `tile_size` grid cell of a labeled sample of `split`
    (`candidate_tiles`), given once; PairforgeError naming the tile otherwise.
    """
    pool = candidate_tiles(ds, split, tile_size)
    known = set(pool)
    chosen: list[Tile] = []
    for tile in tiles:
        sample_id, y, x = str(tile[0]), int(tile[1]), int(tile[2])
        if (sample_id, y, x) not in known:
            raise PairforgeError(
                f"label tile ({sample_id!r}, y {y}, x {x}) is not a {tile_size} px grid tile of a "
                f"labeled sample of split {split!r} of {ds.root} (tiles start at multiples of "
                f"{tile_size} px, lie inside their measurement and need a mask file); fix the "
                "tile list or label that sample"
            )
        if (sample_id, y, x) in chosen:
            raise PairforgeError(
                f"label tile ({sample_id!r}, y {y}, x {x}) is listed twice; list each tile once"
            )
        chosen.append((sample_id, y, x))
    if not chosen:
        raise PairforgeError("a label budget from a tile list needs at least one tile")
    return LabelBudget(
        dataset=ds.spec.name,
        split=split,
        tile_size=int(tile_size),
        seed=int(seed),
        size=len(chosen),
        pool=len(pool),
        tiles=tuple(chosen),
        select_every=select_every,
    )


def load_budget_file(
    path: str | Path,
    ds,
    split: str | None = None,
    tile_size: int | None = None,
    flag: str = "--labels",
) -> LabelBudget:
    """The LabelBudget stored in `path` (JSON: `LabelBudget.to_dict()`, e.g. the budget.json of
    `seg import-labels`, or a record with a "label_budget" entry such as a head's head.json),
    checked against `ds`: same dataset name, `split` / `tile_size` when given, and every tile
    still a grid tile of a labeled sample (`budget_from_tiles`). PairforgeError naming the file
    and the fix otherwise."""
    import json

    path = Path(path)
    where = f"{flag} {path}"
    if not path.is_file():
        raise PairforgeError(
            f"{where}: no such label budget file; give a number of tiles (e.g. 8), 'all', or "
            "the budget.json written by `pairforge seg import-labels`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PairforgeError(
            f"{where}: not readable JSON ({type(err).__name__}: {err}); re-create the file"
        ) from None
    if (
        isinstance(data, dict)
        and "tiles" not in data
        and isinstance(data.get("label_budget"), dict)
    ):
        data = data["label_budget"]  # a record that carries a budget (head.json, pairforge.json)
    if not isinstance(data, dict):
        raise PairforgeError(f"{where}: not a label budget (a JSON object); re-create the file")
    budget = LabelBudget.from_dict(data, where)
    if budget.dataset != ds.spec.name:
        raise PairforgeError(
            f"{where}: a budget of dataset {budget.dataset!r}, but the data is {ds.spec.name!r} "
            f"({ds.root}); pass the dataset it was made for"
        )
    if split is not None and split != budget.split:
        raise PairforgeError(
            f"{where}: the budget's tiles come from split {budget.split!r}, not {split!r}; pass "
            f"--label-split {budget.split} (or leave it out)"
        )
    if tile_size is not None and tile_size != budget.tile_size:
        raise PairforgeError(
            f"{where}: the budget's tiles are {budget.tile_size} px, not {tile_size} px; leave "
            "--label-tile out (the file sets it)"
        )
    budget_from_tiles(
        ds, budget.tiles, budget.tile_size, budget.split, budget.seed, budget.select_every
    )  # fmt: skip  (raises naming a tile that moved)
    return budget
