"""Which labels a generated set's makers read: the mask-reading sources of its manifest.json.

A generated set (`pairforge generate`, `sample`, `seg autolabel`) records its checkpoints in
manifest["checkpoints"][role] with "reads_masks" and "label_budget" (a `LabelBudget` dict, or
null: every mask of the run's split), and an autolabel set its head in manifest["head"]. A
consumer that evaluates at a label budget (eval downstream) reads them here to check that the
set's masks came from exactly that budget's labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pairforge.data.budget import LabelBudget, budget_from_record
from pairforge.errors import PairforgeError

NO_BUDGET = "every mask of its split (no label budget)"


@dataclass(frozen=True)
class LabelSource:
    """One maker of a set that read masks: role (checkpoint role or "head"), its path (None
    when not recorded) and the budget it read (None: every mask of its split)."""

    role: str
    path: str | None
    budget: LabelBudget | None

    def describe(self) -> str:
        """E.g. "the joint run /runs/joint read 8 labeled tiles of ... , seed 0"."""
        where = f" {self.path}" if self.path else ""
        read = NO_BUDGET if self.budget is None else f"the budget {self.budget.describe()}"
        return f"its {self.role}{where} read {read}"


def same_tiles(a: LabelBudget, b: LabelBudget) -> bool:
    """Whether two budgets hold exactly the same labels: dataset, tile size and tile set (their
    seeds and fit / select parts may differ, e.g. the 'all' budgets of two seeds)."""
    return a.dataset == b.dataset and a.tile_size == b.tile_size and set(a.tiles) == set(b.tiles)


def _reads_masks(entry: dict, role: str, where: str) -> bool:
    """The entry's "reads_masks"; older manifests: whether its task trains on masks."""
    if "reads_masks" in entry:
        return bool(entry["reads_masks"])
    from pairforge.core.tasks import get_task

    task = entry.get("task")
    try:
        return get_task(str(task)).needs_masks
    except PairforgeError:
        raise PairforgeError(
            f"{where}: checkpoint {role!r} records neither reads_masks nor a known task "
            f"({task!r}), so which labels it read cannot be checked; regenerate the set with "
            "this version of pairforge"
        ) from None


def manifest_label_sources(set_dir: str | Path) -> list[LabelSource]:
    """The mask-reading makers of the generated set in `set_dir` (at least one).

    PairforgeError (the set cannot be checked) when manifest.json is missing or unreadable, has
    no checkpoints, copies its masks from another dataset (paint --masks), or records no maker
    that read masks.
    """
    path = Path(set_dir) / "manifest.json"
    fix = (
        "regenerate the set with pairforge generate / sample / seg autolabel, which record the "
        "label budget of every checkpoint"
    )
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PairforgeError(
            f"{path}: not found; which labels made this set cannot be checked; {fix}"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise PairforgeError(f"{path}: unreadable ({err}); {fix}") from None
    checkpoints = manifest.get("checkpoints") if isinstance(manifest, dict) else None
    if not isinstance(checkpoints, dict) or not checkpoints:
        raise PairforgeError(
            f"{path}: no checkpoints recorded; which labels made this set cannot be checked; {fix}"
        )
    if manifest.get("mask_source"):
        raise PairforgeError(
            f"{path}: its masks are copied from {manifest['mask_source']} (generate --masks); "
            "which labels they hold cannot be checked against a label budget; use a set whose "
            "masks were generated"
        )
    sources = []
    for role, entry in sorted(checkpoints.items()):
        entry = entry if isinstance(entry, dict) else {}
        if _reads_masks(entry, role, str(path)):
            budget = budget_from_record(entry.get("label_budget"), f"{path} checkpoint {role}")
            sources.append(LabelSource(role, entry.get("path"), budget))
    head = manifest.get("head")
    if isinstance(head, dict):
        budget = budget_from_record(head.get("label_budget"), f"{path} head")
        sources.append(LabelSource("head", head.get("path"), budget))
    if not sources:
        raise PairforgeError(
            f"{path}: none of its checkpoints ({', '.join(sorted(checkpoints))}) read masks and "
            "no head is recorded, so where its masks came from cannot be checked; " + fix
        )
    return sources


def matches_budget(sources: list[LabelSource], budget: LabelBudget) -> bool:
    """Whether every mask-reading maker read exactly the labels of `budget`."""
    return all(s.budget is not None and same_tiles(s.budget, budget) for s in sources)
