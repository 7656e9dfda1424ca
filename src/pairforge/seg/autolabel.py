"""Auto-labeling: sample images from a DDPM run, label them with a head, keep the confident ones.

DatasetDDPM recipe (Baranchuk et al.): generate N images, segment each with the pixel-MLP
ensemble, score each image by the mean of its 10% most uncertain pixels, drop the
`drop_fraction` highest-scoring images, and write the rest as a standard dataset whose
manifest.json records every sample's seed, uncertainty score and whether it was kept. The
per-pixel uncertainty defaults to the recipe's Jensen-Shannon disagreement of the members,
H(mean softmax) - mean H(softmax) ("js"); "entropy" and "disagreement" are options.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text
from pairforge.seg.ensemble import DEFAULT_UNCERTAINTY, check_uncertainty_kind, image_scores

MANIFEST_FILE = "manifest.json"


@dataclass
class LabeledBatch:
    """Head output for generated images: labels (N, H, W) long, scores (N,) per-image
    uncertainty, uncertainty maps (N, H, W)."""

    labels: torch.Tensor
    scores: torch.Tensor
    uncertainty: torch.Tensor


def label_images(
    head,
    images: torch.Tensor,
    uncertainty: str = DEFAULT_UNCERTAINTY,
    top_fraction: float = 0.1,
    batch_size: int = 8,
) -> LabeledBatch:
    """Segment normalized images (N, C, H, W) and score each by its top-`top_fraction` pixels
    of `uncertainty` ("js" default, "entropy", "disagreement")."""
    check_uncertainty_kind(uncertainty, "--uncertainty")
    prediction = head.segment(images, batch_size=batch_size)
    maps = prediction.uncertainty(uncertainty)
    return LabeledBatch(prediction.labels, image_scores(maps, top_fraction), maps)


def select_confident(scores: np.ndarray, drop_fraction: float) -> np.ndarray:
    """Boolean keep-mask (N,): drops the round(drop_fraction * N) highest scores (ties by index)."""
    if not 0.0 <= drop_fraction < 1.0:
        raise PairforgeError(f"--drop {drop_fraction} must be in [0, 1), e.g. 0.2")
    scores = np.asarray(scores, dtype=np.float64)
    num_drop = int(round(drop_fraction * scores.size))
    keep = np.ones(scores.size, dtype=bool)
    if num_drop:
        # Stable sort on descending score: the most uncertain come first.
        order = np.argsort(-scores, kind="stable")
        keep[order[:num_drop]] = False
    return keep


def autolabel(
    head,
    out: str | Path,
    num_samples: int,
    *,
    run_path: str | Path | None = None,
    drop_fraction: float = 0.2,
    uncertainty: str = DEFAULT_UNCERTAINTY,
    top_fraction: float = 0.1,
    sampler: str = "dpm++",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Sample `num_samples` images from the head's diffusion run, label, filter, write OUT.

    run_path: the DDPM run to sample from (default: the run the head's features come from;
    it must be a pairforge run with task image or joint, so that its normalizer and dataset
    spec describe the samples). Sample i uses seed `seed + i` (batch-size independent), drawn
    by `core.unconditional.draw_unconditional` as in `pairforge sample` and `generate`.
    Returns the manifest (also written to OUT/manifest.json); OUT is a standard dataset with
    the kept samples in split "train", images in physical units, masks = head labels.
    """
    from pairforge.core.run import load_run
    from pairforge.core.unconditional import SamplingSettings, draw_unconditional
    from pairforge.data.dataset import DatasetWriter
    from pairforge.data.spec import NormalizationSpec

    if num_samples < 1:
        raise PairforgeError(f"--n {num_samples} must be >= 1")
    select_confident(np.zeros(1), drop_fraction)  # validate before the expensive sampling
    check_uncertainty_kind(uncertainty, "--uncertainty")
    run_path = run_path or head.info.source
    if not run_path or not (Path(run_path) / "model" / "pairforge.json").exists():
        raise PairforgeError(
            f"autolabel samples from a pairforge run; {run_path!r} is not one (pass --run RUN)"
        )
    run = load_run(run_path, device=device)
    if not run.task_spec.feature_source:
        raise PairforgeError(f"run {run_path} has task {run.task!r}; use an image or joint run")
    if run.spec.num_classes != head.num_classes:
        raise PairforgeError(
            f"run {run_path} declares {run.spec.num_classes} classes but the head predicts "
            f"{head.num_classes}; use the run the head was fitted for"
        )
    settings = SamplingSettings(sampler, steps, device)
    spec = run.spec.model_copy(
        update={"name": f"{run.spec.name}-autolabel", "splits": {}, "ignore_index": None}
    )
    # Store the run's normalizer so the written dataset normalizes exactly like the model.
    spec.normalization = NormalizationSpec(**run.normalizer.to_dict())

    records = []
    indices = range(0, num_samples, batch_size)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="autolabel", unit="batch")
    generated_images, generated_labels = [], []
    for first in indices:
        seeds = [seed + i for i in range(first, min(first + batch_size, num_samples))]
        images = draw_unconditional(run, seeds, settings).images.cpu()
        labeled = label_images(head, images, uncertainty, top_fraction, batch_size)
        for row, sample_seed in enumerate(seeds):
            records.append({"seed": sample_seed, "score": float(labeled.scores[row])})
        generated_images.append(images)
        generated_labels.append(labeled.labels)
    images_all = torch.cat(generated_images)
    labels_all = torch.cat(generated_labels)
    keep = select_confident(np.array([r["score"] for r in records]), drop_fraction)
    kept_scores = [r["score"] for r, k in zip(records, keep, strict=True) if k]
    threshold = max(kept_scores) if kept_scores else None

    out = Path(out)
    with DatasetWriter(out, spec) as writer:
        for index, record in enumerate(records):
            record["id"] = f"auto{index:06d}"
            record["kept"] = bool(keep[index])
            if not record["kept"]:
                continue
            physical = run.normalizer.decode(images_all[index].numpy())
            writer.add(record["id"], physical, labels_all[index].numpy(), split="train")
    manifest = {
        "kind": "pairforge-autolabel/1",
        "run": str(Path(run_path).resolve()),
        "head_features": head.extractor.config.to_dict(),
        "num_samples": num_samples,
        "num_kept": int(keep.sum()),
        "drop_fraction": drop_fraction,
        "uncertainty": uncertainty,
        "score": f"mean of the top {top_fraction:.0%} most uncertain pixels ({uncertainty})",
        "score_threshold_kept": threshold,
        "sampler": sampler,
        "steps": steps,
        "base_seed": seed,
        "samples": records,
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest
