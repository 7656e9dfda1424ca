"""Loading a feature source: a pairforge run or a diffusers UNet2DModel directory, as the frozen
denoiser, its schedule and the normalizer that feed real images to the feature extractor."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pairforge.errors import PairforgeError


@dataclass
class FeatureSource:
    """A frozen denoiser and what is needed to feed it real images.

    model / scheduler_config: the UNet2DModel and its training DDPMScheduler config.
    image_channels: channels of real images (model in_channels minus mask-codec channels).
    normalizer: ChannelNormalizer of a pairforge run, None for a plain diffusers directory
        (then the data set's own normalizer is used).
    path: where it was loaded from (stored in a head's config). task: run task or "image".
    is_run: a pairforge run (its record says which labels it read); reads_masks: the model was
        trained on masks (a joint run: its features carry its labels); label_budget: the
        LabelBudget it trained under (None: every mask of its split, or no masks at all).
    """

    model: torch.nn.Module
    scheduler_config: dict[str, Any]
    image_channels: int
    normalizer: Any = None
    path: str = ""
    task: str = "image"
    extra: dict[str, Any] = field(default_factory=dict)
    is_run: bool = False
    reads_masks: bool = False
    label_budget: Any = None


def load_feature_source(path: str | Path, image_channels: int | None = None) -> FeatureSource:
    """Load RUN (pairforge run directory) or DIR (diffusers UNet2DModel save_pretrained folder).

    A pairforge run is recognised by RUN/model/pairforge.json and loaded with
    `pairforge.core.run.load_run` (EMA weights). A diffusers directory needs config.json +
    weights (also accepted in a `unet/` subfolder); its scheduler is `scheduler_config.json`
    next to it (or in `scheduler/`), else a linear 1000-step DDPMScheduler.
    """
    root = Path(path)
    if not root.exists():
        raise PairforgeError(f"feature source {root} does not exist; pass a run or model folder")
    if (root / "model" / "pairforge.json").exists():
        return _load_pairforge_run(root)
    unet_dir = root / "unet" if (root / "unet" / "config.json").exists() else root
    if not (unet_dir / "config.json").exists():
        raise PairforgeError(
            f"{root} is neither a pairforge run (no model/pairforge.json) nor a diffusers model "
            "folder (no config.json); pass RUN or a UNet2DModel save_pretrained directory"
        )
    from diffusers import DDPMScheduler, UNet2DModel

    from pairforge.models.factory import load_pretrained

    model = load_pretrained(UNet2DModel, unet_dir)
    scheduler_config = None
    for candidate in (
        unet_dir / "scheduler_config.json",
        root / "scheduler_config.json",
        root / "scheduler" / "scheduler_config.json",
    ):
        if candidate.exists():
            scheduler_config = json.loads(candidate.read_text())
            break
    if scheduler_config is None:
        scheduler_config = dict(DDPMScheduler(num_train_timesteps=1000).config)
    return FeatureSource(
        model=model,
        scheduler_config=scheduler_config,
        image_channels=model.config.in_channels if image_channels is None else image_channels,
        path=str(root),
    )


def _load_pairforge_run(root: Path) -> FeatureSource:
    from pairforge.core.run import load_run

    run = load_run(root)
    if not run.task_spec.feature_source:
        raise PairforgeError(
            f"run {root} has task {run.task!r}; features need an unconditional image or joint "
            "DDPM (task image or joint)"
        )
    model = _unconditional_unet(run.model)
    in_channels = int(model.config.in_channels)
    # x0 = cat(image, codec(mask)): image channels come first (core.tasks.TaskLayout).
    image_channels = int(run.record.image_channels or in_channels)
    reads_masks, label_budget = _run_labels(run, root)
    return FeatureSource(
        model=model,
        scheduler_config=dict(run.scheduler_config),
        image_channels=image_channels,
        normalizer=run.normalizer,
        path=str(root),
        task=run.task,
        extra={
            "resolution": run.resolution,
            "crop_size": run.crop_size,
            "spec": run.spec,
            "codec": run.codec,
            # Class fractions of the run's training masks, if the run recorded them.
            "class_fractions": run.record.class_fractions,
        },
        is_run=True,
        reads_masks=reads_masks,
        label_budget=label_budget,
    )


def _unconditional_unet(model):
    """The plain UNet2DModel features are read from. A fraction-conditioned run wraps its U-Net
    (models/fractions.py) and routes its condition through the U-Net's class embedding; a copy
    without that embedding is the model under the dropped (null) condition, exactly."""
    import copy

    inner = getattr(model, "unet", None)
    if inner is None:
        return model
    bare = copy.deepcopy(inner)
    bare.class_embedding = None
    return bare


def _run_labels(run, root: Path):
    """(reads_masks, LabelBudget | None) of a loaded run: LoadedRun's properties where it has
    them, else the record's keys (older records: the task's needs_masks, no budget)."""
    from pairforge.data.budget import budget_from_record

    info = run.info
    reads = getattr(run, "reads_masks", None)
    if reads is None:
        reads = info.get("reads_masks", run.task_spec.needs_masks)
    if hasattr(type(run), "label_budget"):
        budget = run.label_budget
    else:
        budget = budget_from_record(info.get("label_budget"), f"{root}/model/pairforge.json")
    return bool(reads), budget


def tile_scale(
    source: FeatureSource, crop_size: int | None, resolution: int | None
) -> tuple[int, int]:
    """(crop_size, resolution): flags, else the run's, else the model's sample_size (1:1)."""
    resolution = resolution or source.extra.get("resolution")
    if resolution is None:
        sample_size = getattr(source.model.config, "sample_size", None)
        resolution = sample_size[0] if isinstance(sample_size, list | tuple) else sample_size
    if not resolution:
        raise PairforgeError("cannot tell the model resolution; pass --resolution")
    crop_size = crop_size or source.extra.get("crop_size") or resolution
    return int(crop_size), int(resolution)
