"""Distillation: the supervised smp segmenter trained on a label budget plus pseudo-labeled real
tiles (and optional synthetic pairs), each source with its own loss weight.

Sources (at the pseudo-labeled set's scale: the head's crop size, resolution and normalizer):
- real: the budget's fit tiles, true labels (`BudgetedDataset` + `budget_tiles`);
- pseudo: seeded random crops of a `seg pseudolabel` set (ignored pixels are ignored by the
  loss; pixels inside the budget's select tiles are ignored too, so selection stays held out);
- synthetic: every labeled pair of each generated set, cut into model-resolution tiles at its
  own pixel scale (generated pairs are at model scale); each mask-reading maker recorded in its
  manifest must have read only labels inside the budget.
The best epoch is chosen on the budget's select tiles (none: fixed schedule, last epoch). A
pseudo-labeled set whose head read labels outside the budget is refused (`require_covered`).
A source of weight 0 is not loaded at all, so `real=1,pseudo=0` trains exactly `seg baseline`
on the same budget (equal weights use the plain mean cross-entropy, as the baseline does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError
from pairforge.seg.commands import BaselineSettings

SOURCES = ("real", "pseudo", "synthetic")
DEFAULT_WEIGHTS = {"real": 1.0, "pseudo": 1.0, "synthetic": 0.5}


def parse_weights(text: str | None) -> dict[str, float]:
    """`--weights real=1,pseudo=1,synthetic=0.5` -> {source: weight >= 0}; missing sources keep
    their defaults. PairforgeError naming the flag, the bad entry and the fix."""
    weights = dict(DEFAULT_WEIGHTS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if name not in SOURCES or not number >= 0 or number == float("inf"):
            raise PairforgeError(
                f"--weights {item.strip()!r}: give source=weight with a source among "
                f"{', '.join(SOURCES)} and a finite weight >= 0, e.g. real=1,pseudo=1,synthetic=0.5"
            )
        weights[name] = number
    return weights


@dataclass(frozen=True)
class DistillSettings(BaselineSettings):
    """How `distill` trains: `seg baseline`'s settings (train_supervised's epochs, batch size,
    learning rate, seed, smp arch / encoder; fewer epochs: the training set is larger), plus
    per-source loss weights and pseudo_crops: random crops of the pseudo-labeled set (None: 4
    per crop-sized area of its images)."""

    epochs: int = 40
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    pseudo_crops: int | None = None


@dataclass
class Source:
    """One training source: images float32 (N, C, res, res), masks int64 (N, res, res), its
    loss weight and what the report says about it."""

    name: str
    images: torch.Tensor
    masks: torch.Tensor
    weight: float
    info: dict[str, Any]


class _HeldOut:
    """A dataset whose masks read IGNORE_INDEX inside the given tiles (sample id -> [(y, x)],
    side `tile` px); everything else is the dataset's."""

    def __init__(self, dataset, tiles, tile: int):
        self.base, self.tile, self.regions = dataset, tile, {}
        for sample_id, y, x in tiles:
            self.regions.setdefault(sample_id, []).append((y, x))

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def read_pair(self, sample_id: str):
        image, mask = self.base.read_pair(sample_id)
        if mask is not None and sample_id in self.regions:
            mask = mask.copy()
            for y, x in self.regions[sample_id]:
                mask[y : y + self.tile, x : x + self.tile] = IGNORE_INDEX
        return image, mask


def pseudo_source(pseudo: Path, record: dict, budget, scale, settings: DistillSettings) -> Source:
    """Seeded random crops of the pseudo-labeled set, the budget's select tiles held out."""
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import RandomCropDataset

    crop, res, normalizer = scale
    dataset = load_dataset(pseudo)
    view = _HeldOut(dataset, budget.select_tiles, budget.tile_size)
    crops = RandomCropDataset(view, dataset.ids(), crop, res, augment=False,
                              length=settings.pseudo_crops, normalizer=normalizer,
                              require_mask=True, seed=settings.seed)  # fmt: skip
    items = [crops[i] for i in range(len(crops))]
    # A crop without a labeled pixel teaches nothing (and a batch of only such crops has no
    # mean loss): drop it.
    items = [i for i in items if (i["mask"] != IGNORE_INDEX).any()]
    if not items:
        raise PairforgeError(
            f"--pseudo {pseudo}: none of its {len(crops)} crops has a labeled pixel; "
            "pseudo-label with a higher --threshold or --target-accuracy lower"
        )
    info = {
        "path": str(pseudo),
        "crops": len(items),
        "drawn": len(crops),
        "head": record["head"]["sha256"],
        "head_labels": record["labels"],
        "threshold": record["threshold"].get("value"),
        "held_out": "the budget's select tiles",
    }
    images = torch.stack([i["image"] for i in items])
    masks = torch.stack([i["mask"] for i in items])
    return Source("pseudo", images, masks, settings.weights["pseudo"], info)


def synthetic_source(path: Path, real, budget, scale, weight: float) -> Source:
    """Every labeled pair of a generated set, checked against the budget, in `res` px tiles."""
    from pairforge.core.budgets import manifest_label_sources
    from pairforge.data.budget import require_covered
    from pairforge.data.dataset import load_dataset
    from pairforge.data.views import load_tiles

    _, res, normalizer = scale
    makers = manifest_label_sources(path)
    for maker in makers:
        require_covered(maker.budget, budget, f"synthetic set {path} ({maker.role})",
                        fix="generate it with generators trained on this budget")  # fmt: skip
    kept = _filter_kept(path)
    if kept == 0:  # `seg filter` kept no pair: nothing to add, said in the report
        info = {"path": str(path), "tiles": 0, "label_sources": [m.describe() for m in makers],
                "note": "seg filter kept none of its pairs"}  # fmt: skip
        empty = torch.zeros((0, len(real.spec.channel_names), res, res), dtype=torch.float32)
        return Source("synthetic", empty, torch.zeros((0, res, res), dtype=torch.int64), weight,
                      info)  # fmt: skip
    dataset = load_dataset(path)
    names = [c.name for c in dataset.spec.classes], [c.name for c in real.spec.classes]
    channels = dataset.spec.channel_names, real.spec.channel_names
    for what, (mine, theirs) in (("classes", names), ("channels", channels)):
        if mine != theirs:
            raise PairforgeError(
                f"--synthetic {path}: {what} {mine} differ from the data's {theirs}; use a set "
                "generated for this dataset"
            )
    ids = [i for i in dataset.ids() if dataset.has_mask(i)]
    if not ids:
        raise PairforgeError(f"--synthetic {path}: no sample has a mask; use a set of pairs")
    tiles = load_tiles(dataset, ids, res, res, normalizer=normalizer)
    info = {"path": str(path), "tiles": len(tiles["source"]),
            "label_sources": [m.describe() for m in makers]}  # fmt: skip
    return Source("synthetic", tiles["image"], tiles["mask"], weight, info)


def _filter_kept(path: Path) -> int | None:
    """How many pairs `seg filter` kept in the set at `path` (None: not a filtered set)."""
    import json

    try:
        record = json.loads((path / "filter.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("kept") if isinstance(record, dict) else None


def _scale(record: dict, pseudo: Path):
    """(crop_size, resolution, normalizer) of the pseudo-labeled set's head."""
    from pairforge.data.normalize import ChannelNormalizer

    scale = record.get("scale") or {}
    if not scale.get("crop_size") or not scale.get("resolution") or not scale.get("normalizer"):
        raise PairforgeError(
            f"{pseudo}/pseudolabel.json: its head records no crop size, resolution or "
            "normalizer; pseudo-label with a head written by `pairforge seg fit`"
        )
    normalizer = ChannelNormalizer.from_dict(scale["normalizer"])
    return int(scale["crop_size"]), int(scale["resolution"]), normalizer


def distill(
    data: str | Path,
    pseudo: str | Path,
    tiles,
    eval_split: str,
    settings: DistillSettings,
    *,
    synthetic: list[str | Path] = (),
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the distilled segmenter (module docstring) on the budget of `tiles` (a TileChoice);
    report IoU on `eval_split`. Returns `iou_report` + best_epoch, best_val_miou, selection,
    labels (the budget's summary), sources [{source, weight, ...}], warnings."""
    from pairforge.data.budget import require_covered
    from pairforge.seg.data import budget_tile_sets, draw_budget
    from pairforge.seg.pseudolabel import read_pseudo_record

    pseudo = Path(pseudo)
    record = read_pseudo_record(pseudo)
    scale = _scale(record, pseudo)
    dataset, budget = draw_budget(data, tiles, scale[0])
    head_budget = _record_budget(record, pseudo)
    require_covered(head_budget, budget, f"pseudo-label set {pseudo} (its head)",
                    fix="pseudo-label with a head fitted on this budget (seg fit with the same "
                    "--labels, --label-seed and --label-tile), or distil at a budget that "
                    "covers the head's")  # fmt: skip
    chosen = budget_tile_sets(dataset, budget, scale[0], scale[1], scale[2])
    weights = settings.weights
    sources = []
    if weights["real"] > 0:
        info = {"tiles": len(chosen.fit.source), "labels": "the budget's fit tiles"}
        sources.append(Source("real", chosen.fit.images, chosen.fit.masks, weights["real"], info))
    if weights["pseudo"] > 0:
        sources.append(pseudo_source(pseudo, record, budget, scale, settings))
    if weights["synthetic"] > 0:
        for path in synthetic:
            sources.append(
                synthetic_source(Path(path), dataset, budget, scale, weights["synthetic"])
            )
    if not sources or all(s.images.shape[0] == 0 for s in sources):
        raise PairforgeError(
            "--weights: every source with a weight > 0 is empty; give real, pseudo or "
            "synthetic (with --synthetic SET) a weight > 0"
        )
    report = _train_and_report(
        data, chosen, sources, scale, eval_split, settings, device, progress, out
    )
    warnings = []
    if record.get("split") == eval_split:
        warnings.append(
            f"the pseudo-labeled set labels split {eval_split!r}, the split scored: its images "
            "were seen (without labels) in training"
        )
    for source in sources:
        if source.name == "synthetic" and source.images.shape[0] == 0:
            warnings.append(f"synthetic set {source.info['path']}: {source.info['note']}")
    if synthetic and weights["synthetic"] == 0:
        warnings.append("--synthetic sets given with weight 0 (--weights synthetic=0): not used")
    if warnings:
        report["warnings"] = warnings
    return report


def _record_budget(record: dict, pseudo: Path):
    from pairforge.data.budget import LabelBudget

    return LabelBudget.from_dict(record["head"]["label_budget"], f"{pseudo}/pseudolabel.json head")


def _train_and_report(data, chosen, sources, scale, eval_split, settings, device, progress, out):
    """Train on the concatenated sources (per-sample weights unless all are equal), score
    `eval_split`, save to `out` when given."""
    from pairforge.core.supervised import save_supervised, train_supervised
    from pairforge.seg.commands import supervised_extra, supervised_report
    from pairforge.seg.data import class_names

    # An empty source (a filtered set that kept no pair) adds nothing, so it must not change
    # the loss either: the run is then exactly the one without it.
    used = [s for s in sources if s.images.shape[0] > 0]
    images = torch.cat([s.images for s in used])
    masks = torch.cat([s.masks for s in used])
    per_sample = torch.cat([torch.full((s.images.shape[0],), s.weight) for s in used])
    uniform = len({s.weight for s in used}) == 1  # the plain mean, as seg baseline
    select = chosen.select
    names = class_names(data)
    model, history = train_supervised(
        images, masks, select.images if select else None, select.masks if select else None,
        num_classes=len(names), **settings.train_kwargs(), device=device, progress=progress,
        sample_weights=None if uniform else per_sample,
    )  # fmt: skip
    report = supervised_report(model, history, data, eval_split, scale, chosen, names)
    report["sources"] = [{"source": s.name, "weight": s.weight, **s.info} for s in sources]
    if out is not None:
        extra = supervised_extra(report, scale, chosen.budget, names)
        extra["sources"] = report["sources"]
        save_supervised(model, out, arch=settings.arch, encoder=settings.encoder, extra=extra)
    return report


def source_lines(report: dict[str, Any]) -> str:
    """One line per training source of a `distill` report: tiles / crops and weight."""
    return "\n".join(
        f"  source {s['source']}: {s.get('tiles', s.get('crops'))} tiles, weight {s['weight']:g}"
        for s in report["sources"]
    )
