"""Auto-labeling: sample images from a DDPM run, label them with a head, keep the confident ones.

DatasetDDPM recipe (Baranchuk et al.): generate N images, segment each with the pixel-MLP
ensemble, score each image by the mean of its 10% most uncertain pixels, drop the
`drop_fraction` highest-scoring images, and write the rest as a standard dataset whose
manifest.json records every sample's seed, uncertainty score and whether it was kept. The
per-pixel uncertainty defaults to the recipe's Jensen-Shannon disagreement of the members,
H(mean softmax) - mean H(softmax) ("js"); "entropy" and "disagreement" are options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairforge.core.dataset_writer import DrawnBatch, module_sha256
from pairforge.core.unconditional import SamplingSettings, draw_unconditional
from pairforge.errors import PairforgeError
from pairforge.seg.ensemble import DEFAULT_UNCERTAINTY, check_uncertainty_kind, image_scores


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
    by `core.unconditional.draw_unconditional` as in `pairforge sample` and `generate`, and
    written by their writer, `core.dataset_writer.write_sampled_dataset` (resumable with the
    same settings and --n). Returns the manifest (also written to OUT/manifest.json); OUT is a
    standard dataset with the kept samples in split "train", images in physical units, masks =
    head labels; the dropped samples' files are removed, their records kept in the manifest.
    """
    from pairforge.core.dataset_writer import single_run_dataset, write_sampled_dataset

    if num_samples < 1:
        raise PairforgeError(f"--n {num_samples} must be >= 1")
    select_confident(np.zeros(1), drop_fraction)  # validate before the expensive sampling
    check_uncertainty_kind(uncertainty, "--uncertainty")
    run_path, run = _load_sampled_run(head, run_path, device)
    sampling = SamplingSettings(sampler, steps, device)
    job_settings = _autolabel_settings(head, drop_fraction, uncertainty, top_fraction, num_samples)

    def draw(indices: list[int], seeds: list[int]) -> DrawnBatch:
        images = draw_unconditional(run, seeds, sampling).images.cpu()
        labeled = label_images(head, images, uncertainty, top_fraction, batch_size)
        scores = [{"score": float(score)} for score in labeled.scores]
        return DrawnBatch(run.normalizer.decode(images.numpy()), labeled.labels.numpy(), scores)

    def select(records: list[dict[str, Any]]) -> np.ndarray:
        return select_confident(np.array([r["score"] for r in records]), drop_fraction)

    def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
        kept_scores = [r["score"] for r in records if r["kept"]]
        return {
            "run": str(Path(run_path).resolve()),
            # The labels behind the masks: the head's budget (the run's are in checkpoints).
            "head": {"sha256": job_settings["head_sha256"], "label_budget": head.info.label_budget},
            "num_kept": len(kept_scores),
            "score_threshold_kept": max(kept_scores) if kept_scores else None,
        }

    job = single_run_dataset(
        run, run_path, f"{run.spec.name}-autolabel", sampling, draw, num_samples, seed,
        batch_size, settings=job_settings, spec_updates={"ignore_index": None},
        id_format="auto{index:06d}", folder_label="autolabel dataset folder", select=select,
        summarize=summarize, noun="samples", progress_desc="autolabel", progress_unit="img",
    )  # fmt: skip
    return write_sampled_dataset(job, out, progress=progress)


def _load_sampled_run(head, run_path, device: str):
    """(run path, LoadedRun) of the image / joint run autolabel samples, checked against the head."""
    from pairforge.core.run import load_run

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
    return run_path, run


def _autolabel_settings(head, drop_fraction, uncertainty, top_fraction, num_samples):
    """What decides the labels and the selection besides the run and the sampler: the head
    (features and a hash of its weights), the score, the drop rule and --n (the selection is
    over all samples, so a finished output is not extended)."""
    return {
        "kind": "pairforge-autolabel/1",
        "head_features": head.extractor.config.to_dict(),
        "head_sha256": module_sha256(head.ensemble),
        "num_samples": num_samples,
        "drop_fraction": drop_fraction,
        "uncertainty": uncertainty,
        "top_fraction": top_fraction,
        "score": f"mean of the top {top_fraction:.0%} most uncertain pixels ({uncertainty})",
    }
