"""Downstream experiment: does a segmenter get better when synthetic pairs join its training data?

Protocol (DESIGN.md): one segmenter recipe (`pairforge.core.supervised`) is trained on
real-only, synthetic-only and real + synthetic data, at several label budgets (numbers of
labeled real training crops) and several seeds. Each training run selects its epoch by mIoU on
tiles of the validation split, never the test split; the selected model is scored once on tiles
of the held-out test measurements. Reported: mean +- std over seeds.

Real training crops are random `crop_size` crops of the labeled train-split measurements,
downsampled to `resolution` (the training view); synthetic pairs are read as they are (already
at model resolution) and normalized with the real dataset's normalizer so that both share one
value range. Every run trains for the same number of optimizer steps with the same number of
validation checkpoints, so a bigger (mixed) training set is not also a longer training, nor one
with more chances to be selected.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from pairforge.core.seeds import downstream_order_seed, downstream_pick_seed
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text

CONDITIONS = ("real", "synthetic", "mixed")


class DownstreamConfig(BaseModel):
    """Settings of one downstream experiment (all recorded in downstream.json).

    budgets: numbers of labeled real training crops; synthetic-only runs ignore them.
    seeds: one training run per seed and (condition, budget); >= 3 for a std worth reading.
    synthetic_fraction: share of synthetic samples in a mixed training set: a budget of B real
        crops gets round(B * f / (1 - f)) synthetic pairs (capped by what exists).
    max_synthetic: synthetic pairs used by synthetic-only runs (None: all).
    steps: optimizer steps per training run. Every run's training set is brought to the size
        of the largest one by repeating its samples (seeded order), so all runs share steps
        per epoch, epochs = ceil(steps / steps per epoch) and the number of validation
        checkpoints.
    crop_size, resolution: real crops/tiles of crop_size px downsampled to resolution px;
        None: the synthetic data's scale (from its manifest), else its image size.
    """

    model_config = ConfigDict(extra="forbid")

    budgets: list[int] = [8, 32]
    seeds: list[int] = [0, 1, 2]
    conditions: list[str] = list(CONDITIONS)
    synthetic_fraction: float = 0.5
    max_synthetic: int | None = None
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    arch: str = "unet"
    encoder: str = "resnet18"
    crop_size: int | None = None
    resolution: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    device: str = "cpu"

    @model_validator(mode="after")
    def _check(self) -> DownstreamConfig:
        """PairforgeError (not a pydantic error) naming the CLI flag of a bad value."""
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise PairforgeError(
                f"--conditions {','.join(self.conditions)}: use some of {', '.join(CONDITIONS)}"
            )
        if any(b < 1 for b in self.budgets) or not self.budgets:
            raise PairforgeError(f"--budgets {self.budgets}: give positive crop counts, e.g. 8,32")
        if not self.seeds:
            raise PairforgeError("--seeds: give at least one seed (>= 3 for a meaningful std)")
        if not 0.0 < self.synthetic_fraction < 1.0:
            raise PairforgeError(
                f"--synthetic-fraction {self.synthetic_fraction}: must be in (0, 1), e.g. 0.5"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise PairforgeError(f"--steps {self.steps}, --batch-size {self.batch_size}: >= 1")
        return self

    def validate(self) -> None:  # type: ignore[override]
        """Check again after fields were changed in place (construction checks already)."""
        self._check()


class PlannedRun(NamedTuple):
    """One training run of the experiment: condition, label budget (None: synthetic-only),
    seed, and how many real crops and synthetic pairs it trains on."""

    condition: str
    budget: int | None
    seed: int
    n_real: int
    n_synthetic: int


def check_disjoint_splits(roles: dict[tuple[str, str], list[str]], real_dir) -> None:
    """PairforgeError when two of train / val / test share a sample.

    Args:
        roles: {(role, split name): sample ids}, role one of train, val, test.
    A training sample in val makes model selection reward memorization; any sample in test and
    another role makes the test score optimistic. dataset.yaml splits are disjoint, so overlaps
    come from flags naming one split twice (e.g. --val-split train).
    """
    items = list(roles.items())
    for first in range(len(items)):
        for second in range(first + 1, len(items)):
            (role_a, split_a), ids_a = items[first]
            (role_b, split_b), ids_b = items[second]
            shared = sorted(set(ids_a) & set(ids_b))
            if shared:
                shown = ", ".join(shared[:8]) + (
                    f" (+{len(shared) - 8} more)" if len(shared) > 8 else ""
                )
                raise PairforgeError(
                    f"{real_dir}: samples {shown} are in both the {role_a} split {split_a!r} and "
                    f"the {role_b} split {split_b!r}; pass disjoint splits (--train-split, "
                    "--val-split, --test-split name different splits of dataset.yaml)"
                )


def _labeled_tiles(ds, split: str, crop_size: int, resolution: int, normalizer) -> dict:
    """Tiles of a split's labeled measurements, with pixels covered twice set to ignore.

    The last tile row/column is flush with the border and overlaps its neighbor; those pixels
    are counted once (in the first tile that covers them) so every pixel weighs the same.
    """
    import torch

    from pairforge.data.views import load_tiles

    ids = ds.ids(split)
    labeled = [i for i in ids if ds.has_mask(i)]
    if not labeled:
        raise PairforgeError(
            f"{ds.root}: split {split!r} has no labeled samples ({len(ids)} unlabeled); the "
            "downstream experiment needs labeled val and test measurements"
        )
    tiles = load_tiles(ds, labeled, crop_size, resolution, normalizer=normalizer)
    masks = tiles["mask"].clone()
    factor = crop_size / resolution
    covered: dict[str, np.ndarray] = {}
    for index, (sample_id, y, x) in enumerate(tiles["source"]):
        if sample_id not in covered:
            height, width = tiles["sizes"][sample_id]
            covered[sample_id] = np.zeros(
                (math.ceil(height / factor) + resolution, math.ceil(width / factor) + resolution),
                dtype=bool,
            )
        top, left = round(y / factor), round(x / factor)
        region = covered[sample_id][top : top + resolution, left : left + resolution]
        masks[index][torch.from_numpy(region.copy())] = IGNORE_INDEX
        region[...] = True
    return {"image": tiles["image"], "mask": masks, "ids": labeled}


def _real_training_crops(ds, ids, count: int, crop_size: int, resolution: int, normalizer, seed):
    """`count` random labeled crops (seeded), (count, C, res, res) and (count, res, res)."""
    import torch

    from pairforge.data.views import RandomCropDataset

    crops = RandomCropDataset(
        ds,
        ids,
        crop_size=crop_size,
        resolution=resolution,
        augment=False,  # the segmenter's training loop augments
        length=count,
        normalizer=normalizer,
        require_mask=True,
        seed=seed,
    )
    items = [crops[i] for i in range(count)]
    return torch.stack([i["image"] for i in items]), torch.stack([i["mask"] for i in items])


def _epochs_for(steps: int, num_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(steps / math.ceil(num_samples / batch_size)))


def _repeat_order(num_samples: int, length: int, seed: int):
    """Indices of `length` draws covering 0..num_samples-1 evenly (concatenated seeded permutations)."""
    import torch

    generator = torch.Generator().manual_seed(downstream_order_seed(seed))
    repeats = math.ceil(length / num_samples)
    order = torch.cat([torch.randperm(num_samples, generator=generator) for _ in range(repeats)])
    return order[:length]


def run_downstream(
    real_dir: str | Path,
    synthetic_dir: str | Path | None,
    config: DownstreamConfig,
    *,
    progress: bool = True,
    log=print,
) -> dict:
    """Run the experiment; returns the JSON-ready result (see `write_downstream`).

    Args:
        real_dir: real dataset with labeled train, val and test splits.
        synthetic_dir: generated dataset (same channels and classes); may be None only when
            config.conditions == ["real"].
        log: called with one line per finished training run (None: silent).

    Returns:
        {"metric": "downstream", "settings": {...}, "data": {...}, "runs": [{"condition",
        "budget" (None for synthetic-only), "seed", "n_real", "n_synthetic", "epochs",
        "best_epoch", "best_val_miou", "selection", "val_miou_per_epoch", "test_miou",
        "test_per_class_iou", "seconds"}],
        "summary": [{"condition", "budget", "n_seeds", "test_miou_mean", "test_miou_std",
        "val_miou_mean"}], "notes": [...]}.
    """
    import torch

    from pairforge.core.metrics import confusion_matrix, miou_from_confusion
    from pairforge.core.supervised import predict_supervised, train_supervised
    from pairforge.data.dataset import load_dataset
    from pairforge.eval.sets import dataset_image_size, load_eval_set, synthetic_scale

    config.validate()  # fields may have been set after construction
    start = time.perf_counter()
    real = load_dataset(real_dir)
    num_classes = real.num_classes
    if num_classes < 2:
        raise PairforgeError(f"{real_dir}: dataset.yaml declares {num_classes} classes; need >= 2")
    needs_synthetic = any(c in ("synthetic", "mixed") for c in config.conditions)
    if needs_synthetic and synthetic_dir is None:
        raise PairforgeError("synthetic and mixed conditions need SYNTHETIC_DIR")

    crop_size, resolution = config.crop_size, config.resolution
    if synthetic_dir is not None and (crop_size is None or resolution is None):
        scale = synthetic_scale(synthetic_dir)
        if scale is None:
            side = dataset_image_size(synthetic_dir)[0]
            scale = (side, side)
        crop_size = crop_size or scale[0]
        resolution = resolution or scale[1]
    if crop_size is None or resolution is None:
        raise PairforgeError(
            "give --crop-size and --resolution (no synthetic data to take them from)"
        )
    normalizer = real.normalizer

    train_ids = [i for i in real.ids(config.train_split) if real.has_mask(i)]
    if not train_ids:
        raise PairforgeError(
            f"{real_dir}: split {config.train_split!r} has no labeled samples; label some or "
            "choose another --train-split"
        )
    # Before any tile is read: a shared sample makes selection or test scores meaningless.
    check_disjoint_splits(
        {
            ("train", config.train_split): train_ids,
            ("val", config.val_split): real.ids(config.val_split),
            ("test", config.test_split): real.ids(config.test_split),
        },
        real_dir,
    )
    val = _labeled_tiles(real, config.val_split, crop_size, resolution, normalizer)
    test = _labeled_tiles(real, config.test_split, crop_size, resolution, normalizer)

    synthetic_images = synthetic_masks = None
    if needs_synthetic:
        synthetic = load_eval_set(synthetic_dir, normalizer=normalizer, resolution=resolution)
        if synthetic.masks is None:
            raise PairforgeError(f"{synthetic_dir}: synthetic dataset has no masks")
        if synthetic.class_names != [c.name for c in real.spec.classes]:
            raise PairforgeError(
                f"classes differ: real {[c.name for c in real.spec.classes]} vs synthetic "
                f"{synthetic.class_names}"
            )
        if synthetic.channel_names != real.spec.channel_names:
            raise PairforgeError(
                f"channels differ: real {real.spec.channel_names} vs synthetic "
                f"{synthetic.channel_names}"
            )
        synthetic_images = torch.from_numpy(synthetic.images[synthetic.labeled])
        synthetic_masks = torch.from_numpy(synthetic.masks)

    notes = []
    available = 0 if synthetic_images is None else int(synthetic_images.shape[0])
    plan: list[PlannedRun] = []
    for seed in config.seeds:
        if "synthetic" in config.conditions:
            wanted = config.max_synthetic or available
            plan.append(PlannedRun("synthetic", None, seed, 0, wanted))
        for budget in config.budgets:
            if "real" in config.conditions:
                plan.append(PlannedRun("real", budget, seed, budget, 0))
            if "mixed" in config.conditions:
                fraction = config.synthetic_fraction
                wanted = round(budget * fraction / (1.0 - fraction))
                plan.append(PlannedRun("mixed", budget, seed, budget, wanted))
    for run in plan:
        note = (
            f"{run.condition} budget {run.budget}: {run.n_synthetic} synthetic pairs wanted, "
            f"{available} exist"
        )
        if run.n_synthetic > available and note not in notes:
            notes.append(note)
    plan = [run._replace(n_synthetic=min(run.n_synthetic, available)) for run in plan]
    # Every run trains on the same number of samples per epoch (smaller sets are repeated in
    # seeded random order), so all runs get the same steps per epoch, the same epochs and the
    # same number of validation checkpoints to select from.
    epoch_samples = max(run.n_real + run.n_synthetic for run in plan)
    epochs = _epochs_for(config.steps, epoch_samples, config.batch_size)

    runs = []
    for condition, budget, seed, n_real, n_synthetic in plan:  # PlannedRun fields
        run_start = time.perf_counter()
        parts_images, parts_masks = [], []
        if n_real:
            images, masks = _real_training_crops(
                real, train_ids, n_real, crop_size, resolution, normalizer, seed
            )
            parts_images.append(images)
            parts_masks.append(masks)
        if n_synthetic:
            generator = torch.Generator().manual_seed(downstream_pick_seed(seed))
            pick = torch.randperm(available, generator=generator)[:n_synthetic]
            parts_images.append(synthetic_images[pick])
            parts_masks.append(synthetic_masks[pick])
        train_images, train_masks = torch.cat(parts_images), torch.cat(parts_masks)
        order = _repeat_order(train_images.shape[0], epoch_samples, seed)
        train_images, train_masks = train_images[order], train_masks[order]
        model, history = train_supervised(
            train_images,
            train_masks,
            val["image"],
            val["mask"],
            num_classes=num_classes,
            epochs=epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=seed,
            arch=config.arch,
            encoder=config.encoder,
            device=config.device,
            progress=False,
        )
        prediction = predict_supervised(model, test["image"], batch_size=config.batch_size)
        confusion = confusion_matrix(prediction, test["mask"], num_classes, IGNORE_INDEX)
        test_miou, per_class = miou_from_confusion(confusion)
        record = {
            "condition": condition,
            "budget": budget,
            "seed": seed,
            "n_real": n_real,
            "n_synthetic": n_synthetic,
            "epoch_samples": epoch_samples,
            "epochs": epochs,
            "best_epoch": history["best_epoch"],
            "best_val_miou": history["best_val_miou"],
            "selection": history.get("selection"),
            # The whole selection record: val mIoU after each epoch (test is never looked at).
            "val_miou_per_epoch": [e.get("val_miou") for e in history.get("epochs", [])],
            "test_miou": test_miou,
            "test_per_class_iou": [None if math.isnan(v) else float(v) for v in per_class],
            "seconds": time.perf_counter() - run_start,
        }
        runs.append(record)
        if log is not None and progress:
            log(
                f"downstream {len(runs)}/{len(plan)}: {condition:9s} budget={budget} seed={seed} "
                f"val mIoU {record['best_val_miou']:.3f} (epoch {record['best_epoch']}/{epochs}) "
                f"test mIoU {test_miou:.3f} [{record['seconds']:.0f} s]"
            )

    return {
        "metric": "downstream",
        "settings": {**config.model_dump(), "crop_size": crop_size, "resolution": resolution},
        "data": {
            "real": str(real_dir),
            "synthetic": None if synthetic_dir is None else str(synthetic_dir),
            "n_synthetic_available": 0
            if synthetic_images is None
            else int(synthetic_images.shape[0]),
            "train_measurements": train_ids,
            "val_measurements": val["ids"],
            "test_measurements": test["ids"],
            "n_val_tiles": int(val["image"].shape[0]),
            "n_test_tiles": int(test["image"].shape[0]),
            "classes": [c.name for c in real.spec.classes],
            "model_selection": f"best val mIoU on split {config.val_split!r} (never test)",
        },
        "runs": runs,
        "summary": summarize_runs(runs),
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def summarize_runs(runs: list[dict]) -> list[dict]:
    """Mean and sample std (ddof 1; None for one seed) of test mIoU per (condition, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["condition"], run["budget"]), []).append(run)
    order = {c: i for i, c in enumerate(CONDITIONS)}
    summary = []
    for (condition, budget), members in sorted(
        groups.items(), key=lambda item: (item[0][1] or 0, order[item[0][0]])
    ):
        test = np.array([m["test_miou"] for m in members], dtype=np.float64)
        val = np.array([m["best_val_miou"] for m in members], dtype=np.float64)
        summary.append(
            {
                "condition": condition,
                "budget": budget,
                "n_seeds": len(members),
                "n_real": members[0]["n_real"],
                "n_synthetic": members[0]["n_synthetic"],
                "test_miou_mean": float(np.nanmean(test)),
                "test_miou_std": float(np.nanstd(test, ddof=1)) if len(test) > 1 else None,
                "val_miou_mean": float(np.nanmean(val)),
            }
        )
    return summary


def format_downstream_table(result: dict) -> str:
    """Markdown table: test mIoU mean +- std per condition and budget."""
    lines = [
        "| condition | real crops | synthetic pairs | seeds | test mIoU (mean +- std) | val mIoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        std = "" if row["test_miou_std"] is None else f" +- {100 * row['test_miou_std']:.2f}"
        lines.append(
            f"| {row['condition']} | {row['n_real']} | {row['n_synthetic']} | {row['n_seeds']} | "
            f"{100 * row['test_miou_mean']:.2f}{std} | {100 * row['val_miou_mean']:.2f} |"
        )
    lines.append("")
    lines.append(
        "mIoU in %, on tiles of the held-out test measurements; epoch chosen on the validation "
        "split."
    )
    return "\n".join(lines)


def plot_downstream(result: dict, path: str | Path) -> Path:
    """Test mIoU vs label budget (log x), error bars = std over seeds; synthetic-only as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    summary = result["summary"]
    for condition, label in (("real", "real only"), ("mixed", "real + synthetic")):
        rows = sorted(
            (r for r in summary if r["condition"] == condition), key=lambda r: r["budget"]
        )
        if rows:
            axis.errorbar(
                [r["budget"] for r in rows],
                [100 * r["test_miou_mean"] for r in rows],
                yerr=[100 * (r["test_miou_std"] or 0.0) for r in rows],
                marker="o",
                capsize=3,
                label=label,
            )
    for row in (r for r in summary if r["condition"] == "synthetic"):
        mean, std = 100 * row["test_miou_mean"], 100 * (row["test_miou_std"] or 0.0)
        axis.axhline(
            mean, color="gray", linestyle="--", label=f"synthetic only ({row['n_synthetic']})"
        )
        axis.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
    axis.set_xscale("log")
    budgets = sorted({r["budget"] for r in summary if r["budget"] is not None})
    if budgets:
        axis.set_xticks(budgets, [str(b) for b in budgets])
        axis.minorticks_off()
    axis.set_xlabel("labeled real training crops")
    axis.set_ylabel("test mIoU (%)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_downstream(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write downstream.json, downstream.md and downstream.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "downstream.json",
        "table": out_dir / "downstream.md",
        "plot": out_dir / "downstream.png",
    }
    atomic_write_text(paths["json"], json.dumps(result, indent=2))
    atomic_write_text(paths["table"], format_downstream_table(result) + "\n")
    plot_downstream(result, paths["plot"])
    return paths
