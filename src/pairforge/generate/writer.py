"""Writes generated pairs as a standard pairforge dataset with manifest.json; resumable and sharded.

Layout of OUT: the dataset (dataset.yaml, images/, masks/), manifest.json (settings, checkpoint
hashes, one record per sample), grid.png, and .generate/ (settings.json and one record file per
finished sample: a sample counts as done once its record exists, which is written after its
image and mask). Sample i has id `gen{i:06d}` and seed `base_seed + i`; process r of R takes the
indices i with i % R == r, so any process count gives the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.errors import PairforgeError
from pairforge.generate.pipelines import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_SR_NOISE_LEVEL,
    GeneratedPairs,
    SamplingSettings,
    generate_joint,
    generate_two_stage,
    mask_agreement,
    paint_images,
    super_resolve,
)
from pairforge.io import atomic_write_text, ensure_writable_dir, iter_tmp_files

PIPELINES = ("joint", "two-stage", "paint")
STATE_DIR = ".generate"
MANIFEST_FILE = "manifest.json"
GRID_FILE = "grid.png"
GRID_SAMPLES = 8


@dataclass
class RunRef:
    """A loaded run (`pairforge.train.run.LoadedRun` or alike) and the folder it came from."""

    run: Any
    path: Path | None = None


@dataclass
class GenerationPlan:
    """Everything that decides the generated samples (plus batch size, which does not).

    pipeline "joint" needs runs["joint"]; "two-stage" needs runs["mask"] and runs["sdm"];
    "paint" needs runs["sdm"] and `mask_source`, a dataset whose labeled masks (e.g. drawn by a
    user) get images: sample i paints labeled mask i % (number of labeled masks).
    runs["sr"] optional for a 4x super-resolution stage at the fixed `sr_noise_level`.
    """

    pipeline: str
    runs: dict[str, RunRef]
    num_samples: int
    base_seed: int = 0
    batch_size: int = 8
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    sr_noise_level: float = DEFAULT_SR_NOISE_LEVEL
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    mask_source: Path | None = None

    def __post_init__(self) -> None:
        needed = {"joint": ["joint"], "two-stage": ["mask", "sdm"], "paint": ["sdm"]}.get(
            self.pipeline
        )
        if needed is None:
            raise PairforgeError(
                f"--pipeline {self.pipeline!r} is unknown; use one of {', '.join(PIPELINES)}."
            )
        flags = {"joint": "--run", "mask": "--mask-run", "sdm": "--sdm-run"}
        for role in needed:
            if role not in self.runs:
                raise PairforgeError(f"--pipeline {self.pipeline} needs {flags[role]} RUN.")
        if (self.pipeline == "paint") != (self.mask_source is not None):
            raise PairforgeError(
                "--masks DATASET goes with --pipeline paint (and paint needs it); "
                f"got --pipeline {self.pipeline} with --masks {self.mask_source}."
            )
        if self.num_samples < 1 or self.batch_size < 1:
            raise PairforgeError(
                f"--n {self.num_samples} / --batch-size {self.batch_size}: both must be >= 1."
            )

    @property
    def final_run(self):
        """The run whose normalizer and spec describe the written images."""
        if "sr" in self.runs:
            return self.runs["sr"].run
        return self.runs["joint" if self.pipeline == "joint" else "sdm"].run


def sample_id(index: int) -> str:
    return f"gen{index:06d}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hashes(run_dir: Path | None) -> dict[str, str]:
    """sha256 of every weight file (*.safetensors) under RUN/model, keyed by relative path."""
    if run_dir is None:
        return {}
    model_dir = Path(run_dir) / "model"
    return {
        str(p.relative_to(model_dir)): file_sha256(p)
        for p in sorted(model_dir.rglob("*.safetensors"))
    }


def generation_settings(plan: GenerationPlan) -> dict[str, Any]:
    """The settings that decide sample content; a resumed run must match them exactly."""
    checkpoints = {
        role: {
            "path": str(Path(ref.path).resolve()) if ref.path else None,
            "task": ref.run.task,
            "sha256": checkpoint_hashes(ref.path),
        }
        for role, ref in sorted(plan.runs.items())
    }
    settings: dict[str, Any] = {
        "pipeline": plan.pipeline,
        "checkpoints": checkpoints,
        **plan.sampling.as_dict(),
        "base_seed": plan.base_seed,
        "guidance_scale": plan.guidance_scale if plan.pipeline != "joint" else None,
        "sr": None,
    }
    if plan.mask_source is not None:
        settings["mask_source"] = str(Path(plan.mask_source).resolve())
    if "sr" in plan.runs:
        low = plan.runs["joint" if plan.pipeline == "joint" else "sdm"].run.resolution
        high = plan.runs["sr"].run.resolution
        settings["sr"] = {
            "noise_level": plan.sr_noise_level,
            "low_resolution": low,
            "resolution": high,
        }
    return settings


def generate_pairs(
    plan: GenerationPlan, seeds: Sequence[int], masks: np.ndarray | None = None
) -> tuple[GeneratedPairs, list[dict[str, Any]]]:
    """Run the plan's pipeline for `seeds` (paint: for `masks` (B, H, W) class indices);
    returns the final pairs and per-sample extras."""
    runs = {role: ref.run for role, ref in plan.runs.items()}
    if plan.pipeline == "paint":
        pairs = paint_images(runs["sdm"], masks, seeds, plan.guidance_scale, plan.sampling)
    elif plan.pipeline == "joint":
        pairs = generate_joint(runs["joint"], seeds, plan.sampling)
    else:
        pairs = generate_two_stage(
            runs["mask"], runs["sdm"], seeds, plan.guidance_scale, plan.sampling
        )
    extras: list[dict[str, Any]] = [{} for _ in seeds]
    if "sr" in runs:
        low_res_masks = pairs.masks
        pairs = super_resolve(runs["sr"], pairs, seeds, plan.sr_noise_level, plan.sampling)
        agreement = mask_agreement(pairs.masks, low_res_masks, pairs.num_classes)
        for extra, value in zip(extras, agreement.per_sample_agreement, strict=True):
            extra["sr_mask_agreement"] = value
    return pairs, extras


class MaskSource:
    """The labeled masks of plan.mask_source, in id order; index i -> mask i % count."""

    def __init__(self, plan: GenerationPlan):
        from pairforge.data.dataset import load_dataset

        self.dataset = load_dataset(plan.mask_source)
        self.ids = [i for i in self.dataset.ids() if self.dataset.has_mask(i)]
        if not self.ids:
            raise PairforgeError(f"--masks {plan.mask_source}: the dataset has no labeled masks.")
        theirs = [(c.id, c.name) for c in self.dataset.spec.classes]
        ours = [(c.id, c.name) for c in plan.runs["sdm"].run.spec.classes]
        if theirs != ours:
            raise PairforgeError(
                f"--masks {plan.mask_source}: classes {theirs} differ from the SDM run's {ours}; "
                "declare the same class ids and names in its dataset.yaml."
            )
        self._shapes: dict[int, tuple[int, ...]] = {}

    def source_id(self, index: int) -> str:
        return self.ids[index % len(self.ids)]

    def mask(self, index: int) -> np.ndarray:
        return self.dataset.read_mask(self.source_id(index))

    def shape(self, index: int) -> tuple[int, ...]:
        slot = index % len(self.ids)
        if slot not in self._shapes:
            self._shapes[slot] = self.mask(index).shape
        return self._shapes[slot]


def _batches(todo: list[int], batch_size: int, source: MaskSource | None) -> list[list[int]]:
    """Consecutive chunks of at most batch_size indices; with masks, each chunk has one shape."""
    batches: list[list[int]] = []
    for index in todo:
        fits = batches and len(batches[-1]) < batch_size
        if fits and source is not None:
            fits = source.shape(batches[-1][0]) == source.shape(index)
        if fits:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Raise if `out` was generated with other settings (every process checks, so all stop)."""
    path = out / STATE_DIR / "settings.json"
    if path.exists():
        # Checkpoints are identified by their hashes; a run folder may move between sessions.
        previous = _without_paths(json.loads(path.read_text()))
        settings = _without_paths(settings)
        changed = [
            k for k in sorted(set(previous) | set(settings)) if previous.get(k) != settings.get(k)
        ]
        if changed:
            key = changed[0]
            raise PairforgeError(
                f"{out}: was generated with {key}={previous.get(key)!r}, now {settings.get(key)!r}; "
                "resume with the same settings and checkpoints, or pass a new --out."
            )


def _prepare_state(out: Path, settings: dict[str, Any]) -> None:
    """Main process: store the settings of a new output; drop timings of an earlier session and
    the temporary files that killed processes left (their samples have no record, so they are
    generated again)."""
    state = out / STATE_DIR
    (state / "records").mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "images", out / "masks", state, state / "records"):
        for stray in iter_tmp_files(folder):
            stray.unlink(missing_ok=True)
    if not (state / "settings.json").exists():
        atomic_write_text(state / "settings.json", json.dumps(settings, indent=2))
    for stale in state.glob("timing-*.json"):
        stale.unlink()


def _without_paths(settings: dict[str, Any]) -> dict[str, Any]:
    checkpoints = {
        role: {k: v for k, v in entry.items() if k != "path"}
        for role, entry in settings.get("checkpoints", {}).items()
    }
    return {**settings, "checkpoints": checkpoints}


def _done_records(out: Path) -> dict[str, dict[str, Any]]:
    record_dir = out / STATE_DIR / "records"
    if not record_dir.is_dir():
        return {}
    records = {}
    for path in sorted(record_dir.glob("*.json")):
        if path.name.startswith("."):
            continue  # a temporary file of a killed process
        try:
            records[path.stem] = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            # Records are written atomically, so this one was damaged afterwards: generate
            # that sample again (its files are overwritten).
            warnings.warn(f"{path}: damaged record; generating {path.stem} again", stacklevel=2)
            path.unlink(missing_ok=True)
    return records


def _check_count(out: Path, done: dict[str, dict[str, Any]], num_samples: int) -> None:
    """Refuse --n smaller than what `out` already holds: keeping the extra pairs would make
    the dataset larger than asked, deleting them would lose work; the user decides."""
    extra = sorted(r["index"] for r in done.values() if r.get("index", 0) >= num_samples)
    if extra:
        raise PairforgeError(
            f"{out}: already holds {len(done)} generated pairs (up to {sample_id(extra[-1])}), "
            f"more than --n {num_samples}; pass --n {max(extra) + 1} or more to resume or extend "
            f"it, or a new --out for a dataset of {num_samples} pairs."
        )


def output_spec(plan: GenerationPlan):
    """DatasetSpec of the generated dataset: channels/classes of the final run, its normalization."""
    from pairforge.data.spec import NormalizationSpec

    run = plan.final_run
    spec = run.spec.model_copy(deep=True)
    spec.name = f"{spec.name}-generated-{plan.pipeline}{'-sr' if 'sr' in plan.runs else ''}"
    spec.splits = {}
    spec.normalization = NormalizationSpec(**run.normalizer.to_dict())
    return spec


def write_generated_dataset(
    plan: GenerationPlan,
    out: str | Path,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Generate plan.num_samples pairs into `out` (this process's share); resumable.

    An existing `out` with the same settings is resumed: finished samples are kept, temporary
    files of killed processes removed; a larger num_samples extends it, a smaller one than the
    samples on disk is refused (PairforgeError) rather than silently keeping the extra ones.

    Every process calls this with its index; `barrier` waits for all of them (e.g.
    accelerator.wait_for_everyone). The main process (index 0) then lists every finished sample
    in dataset.yaml and writes manifest.json and grid.png; it returns the manifest, others None.
    """
    from tqdm.auto import tqdm

    from pairforge.data.dataset import DatasetWriter

    out = Path(out)
    is_main = process_index == 0
    ensure_writable_dir(out, "generated dataset folder")
    settings = generation_settings(plan)
    _check_settings(out, settings)
    if is_main:
        _prepare_state(out, settings)
    barrier()
    record_dir = out / STATE_DIR / "records"
    record_dir.mkdir(parents=True, exist_ok=True)

    done = _done_records(out)
    _check_count(out, done, plan.num_samples)
    todo = [
        i for i in range(process_index, plan.num_samples, num_processes) if sample_id(i) not in done
    ]
    spec = output_spec(plan)
    # Only the main process flushes dataset.yaml while running; the others write files only and
    # the main process lists their samples at the end (records tell which are finished).
    writer = DatasetWriter(out, spec, flush_every=32 if is_main else None)
    started = time.perf_counter()
    bar = tqdm(
        total=len(todo), desc=f"generate [{process_index}]", position=process_index,
        disable=not progress, unit="pair",
    )  # fmt: skip
    source = MaskSource(plan) if plan.pipeline == "paint" else None
    for indices in _batches(todo, plan.batch_size, source):
        seeds = [plan.base_seed + i for i in indices]
        given_masks = np.stack([source.mask(i) for i in indices]) if source else None
        pairs, extras = generate_pairs(plan, seeds, given_masks)
        images, masks = pairs.physical_images(), pairs.masks_numpy()
        for k, index in enumerate(indices):
            writer.add(sample_id(index), images[k], masks[k], split="train")
            record = {"id": sample_id(index), "index": index, "seed": seeds[k], **extras[k]}
            if source:
                record["mask_source_id"] = source.source_id(index)
            atomic_write_text(record_dir / f"{sample_id(index)}.json", json.dumps(record))
        bar.update(len(indices))
    bar.close()
    elapsed = time.perf_counter() - started
    if is_main:
        writer.flush()
    atomic_write_text(
        out / STATE_DIR / f"timing-{process_index}.json",
        json.dumps({"samples": len(todo), "seconds": elapsed}),
    )
    barrier()
    if not is_main:
        return None
    return finalize(plan, out, settings, num_processes)


def finalize(
    plan: GenerationPlan, out: Path, settings: dict[str, Any], num_processes: int
) -> dict[str, Any]:
    """List every finished sample in dataset.yaml; write manifest.json and grid.png."""
    from pairforge.data.dataset import DatasetWriter

    records = sorted(_done_records(out).values(), key=lambda r: r["index"])
    writer = DatasetWriter(out, output_spec(plan))
    writer.spec.splits = {"train": [r["id"] for r in records]}
    writer.flush()
    timings = [json.loads(p.read_text()) for p in sorted((out / STATE_DIR).glob("timing-*.json"))]
    manifest: dict[str, Any] = {
        **settings,
        "num_samples": len(records),
        "num_processes": num_processes,
        "batch_size": plan.batch_size,
        "generated_this_session": {
            "samples": sum(t["samples"] for t in timings),
            "process_seconds": sum(t["seconds"] for t in timings),
        },
        "samples": records,
    }
    if plan.runs.get("sr") is not None:
        values = [r["sr_mask_agreement"] for r in records if "sr_mask_agreement" in r]
        manifest["sr_mask_agreement_mean"] = float(np.mean(values)) if values else None
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
    write_grid(out, [r["id"] for r in records[:GRID_SAMPLES]])
    return manifest


def write_grid(out: Path, ids: Sequence[str]) -> Path | None:
    """grid.png via `pairforge.viz.save_grid`: one row per sample (in `ids` order), one column
    per channel (viridis, 1..99th percentile per channel), then the mask and its overlay on
    channel 0; a title names the columns. Tiles are upscaled to ~96 px. Samples whose size
    differs from the first one's (paint runs with masks of several sizes) are left out.
    Returns the path, or None for no ids."""
    if not ids:
        return None
    from pairforge.data.dataset import load_dataset
    from pairforge.viz import save_grid

    ds = load_dataset(out)
    pairs = [ds.read_pair(sample) for sample in ids]
    pairs = [(image, mask) for image, mask in pairs if image.shape == pairs[0][0].shape]
    images = np.stack([image for image, _ in pairs])
    with_masks = all(mask is not None for _, mask in pairs)
    masks = np.stack([mask for _, mask in pairs]) if with_masks else None
    columns = ds.spec.channel_names + (["mask", "overlay"] if with_masks else [])
    return save_grid(
        out / GRID_FILE,
        images,
        masks,
        channel_names=ds.spec.channel_names,
        class_colors=ds.spec.class_colors,
        max_items=len(images),
        title=" | ".join(columns),
    )
