"""The one sampling-to-dataset writer under `pairforge sample`, `generate` and `seg autolabel`.

A command describes its output as a `SampledDataset` (the dataset spec, the settings that decide
the samples, a `draw(indices, seeds)` callback, the id rule) and `write_sampled_dataset` does the
rest the same way for all three. Layout of OUT: the dataset (dataset.yaml, images/, masks/; a
mask-only run writes masks/ only), manifest.json (settings with checkpoint hashes, one record per
sample), grid.png and .generate/ (settings.json and one record file per finished sample: a sample
counts as done once its record exists, which is written after its image and mask). Sample i has
seed `base_seed + i`; process r of R takes the indices i with i % R == r, so any process count
gives the same dataset. An existing OUT is resumed when its settings match.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write_text, ensure_writable_dir, iter_tmp_files

STATE_DIR = ".generate"
MANIFEST_FILE = "manifest.json"
GRID_SAMPLES = 8

Record = dict[str, Any]


@dataclass
class DrawnBatch:
    """One draw call's samples: images (B, C, H, W) float32 in physical units (None for a
    mask-only run), masks (B, H, W) int64 class indices (None for image runs), extras one dict
    per sample merged into its record (None: nothing extra)."""

    images: np.ndarray | None
    masks: np.ndarray | None
    extras: list[Record] | None = None


def consecutive_batches(todo: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive chunks of at most batch_size indices."""
    return [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]


@dataclass
class SampledDataset:
    """What a sampling command writes; `write_sampled_dataset` writes it.

    spec:      DatasetSpec of the output (channels, classes, normalization; splits are set here).
    settings:  JSON-ready settings that decide the samples (checkpoints {role: {path, task,
               sha256}}, sampler, seeds, ...); a resumed OUT must have the same ones (checkpoint
               paths excepted: a run folder may move). The manifest starts with them.
    draw:      draw(indices, seeds) -> DrawnBatch for one batch.
    id_format: the sample id, formatted with index= and seed= (e.g. "gen{index:06d}").
    has_images: False: a mask-only run, written as masks/<id>.png alone (no dataset.yaml).
    batches:   batches(todo, batch_size) -> index batches (default: consecutive chunks).
    select:    select(records) -> keep flag per record (index order); the dataset lists the kept
               samples only, the others' files are removed and their records say kept: false.
    summarize: summarize(records) -> extra manifest keys (after the samples).
    noun:      what the samples are called in messages ("generated pairs", "samples").
    """

    spec: Any
    settings: dict[str, Any]
    num_samples: int
    draw: Callable[[list[int], list[int]], DrawnBatch]
    base_seed: int = 0
    batch_size: int = 8
    id_format: str = "gen{index:06d}"
    folder_label: str = "generated dataset folder"
    has_images: bool = True
    batches: Callable[[list[int], int], list[list[int]]] = consecutive_batches
    select: Callable[[list[Record]], Sequence[bool]] | None = None
    summarize: Callable[[list[Record]], dict[str, Any]] | None = None
    noun: str = "generated pairs"
    progress_desc: str = "generate"
    progress_unit: str = "pair"

    def sample_id(self, index: int) -> str:
        return self.id_format.format(index=index, seed=self.base_seed + index)


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


def module_sha256(module) -> str:
    """sha256 of a torch module's state (names, dtypes, shapes and values, in key order):
    identifies weights that live in memory, e.g. a segmentation head's."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_entry(run, run_dir: Path | None) -> dict[str, Any]:
    """The manifest's description of a run: {path (resolved or None), task, sha256,
    reads_masks (whether its training read masks), label_budget (LabelBudget.to_dict() of
    those masks, None: every mask of its split, or none)}.

    `run` is a core.run.LoadedRun; objects without its label properties (stand-ins) count as
    their task's default: reads masks if the task needs them, no budget.
    """
    from pairforge.core.tasks import get_task

    reads_masks = getattr(run, "reads_masks", None)
    if reads_masks is None:
        reads_masks = get_task(run.task).needs_masks
    budget = getattr(run, "label_budget", None)
    return {
        "path": str(Path(run_dir).resolve()) if run_dir else None,
        "task": run.task,
        "sha256": checkpoint_hashes(run_dir),
        "reads_masks": bool(reads_masks),
        "label_budget": None if budget is None else budget.to_dict(),
    }


def output_spec(run, name: str, **updates):
    """DatasetSpec of samples of `run`: its channels and classes, no splits yet, and its
    normalization, so the written samples encode exactly as the model made them."""
    from pairforge.data.spec import NormalizationSpec

    spec = run.spec.model_copy(deep=True, update={"name": name, "splits": {}, **updates})
    spec.normalization = NormalizationSpec(**run.normalizer.to_dict())
    return spec


def single_run_dataset(
    run,
    run_dir: Path | None,
    name: str,
    sampling,
    draw: Callable[[list[int], list[int]], DrawnBatch],
    num_samples: int,
    seed: int,
    batch_size: int,
    settings: dict[str, Any] | None = None,
    spec_updates: dict[str, Any] | None = None,
    **options: Any,
) -> SampledDataset:
    """The SampledDataset of samples drawn from one unconditional run (`pairforge sample`,
    `seg autolabel`): spec = output_spec(run, name, **spec_updates); settings = the run's
    checkpoint entry (role: its task), the SamplingSettings `sampling`, base_seed `seed`, then
    the command's own `settings`; options: the other SampledDataset fields."""
    spec = output_spec(run, name, **(spec_updates or {}))
    job_settings = {
        "checkpoints": {run.task: checkpoint_entry(run, run_dir)},
        **sampling.as_dict(),
        "base_seed": seed,
        **(settings or {}),
    }
    return SampledDataset(spec, job_settings, num_samples, draw, seed, batch_size, **options)


def write_sampled_dataset(
    job: SampledDataset,
    out: str | Path,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Draw job.num_samples samples into `out` (this process's share); resumable.

    An existing `out` with the same settings is resumed: finished samples are kept, temporary
    files of killed processes removed; a larger num_samples extends it, a smaller one than the
    samples on disk is refused (PairforgeError) rather than silently keeping the extra ones.

    Every process calls this with its index; `barrier` waits for all of them (e.g.
    accelerator.wait_for_everyone). The main process (index 0) then lists every finished sample
    in dataset.yaml and writes manifest.json and grid.png; it returns the manifest, others None.
    """
    out = Path(out)
    is_main = process_index == 0
    ensure_writable_dir(out, job.folder_label)
    _check_settings(out, job.settings)
    if is_main:
        _prepare_state(out, job.settings)
    barrier()
    (out / STATE_DIR / "records").mkdir(parents=True, exist_ok=True)

    done = _done_records(out)
    _check_count(out, done, job)
    todo = [
        i
        for i in range(process_index, job.num_samples, num_processes)
        if job.sample_id(i) not in done
    ]
    # Only the main process flushes dataset.yaml while running; the others write files only and
    # the main process lists their samples at the end (records tell which are finished).
    target = _open_target(job, out, flush_every=32 if is_main else None)
    started = time.perf_counter()
    _draw_and_write(job, out, target, todo, process_index, progress)
    elapsed = time.perf_counter() - started
    if is_main:
        target.flush()
    atomic_write_text(
        out / STATE_DIR / f"timing-{process_index}.json",
        json.dumps({"samples": len(todo), "seconds": elapsed}),
    )
    barrier()
    if not is_main:
        return None
    return finalize(job, out, num_processes)


def _draw_and_write(job, out: Path, target, todo: list[int], process_index: int, progress: bool):
    """Draw the batches of `todo`; write each sample's files, then its record."""
    from tqdm.auto import tqdm

    record_dir = out / STATE_DIR / "records"
    bar = tqdm(
        total=len(todo), desc=f"{job.progress_desc} [{process_index}]", position=process_index,
        disable=not progress, unit=job.progress_unit,
    )  # fmt: skip
    for indices in job.batches(todo, job.batch_size):
        seeds = [job.base_seed + i for i in indices]
        drawn = job.draw(indices, seeds)
        extras = drawn.extras or [{} for _ in indices]
        for k, index in enumerate(indices):
            sample = job.sample_id(index)
            image = drawn.images[k] if drawn.images is not None else None
            mask = drawn.masks[k] if drawn.masks is not None else None
            target.add(sample, image, mask, split="train")
            record = {"id": sample, "index": index, "seed": seeds[k], **extras[k]}
            atomic_write_text(record_dir / f"{sample}.json", json.dumps(record))
        bar.update(len(indices))
    bar.close()


def finalize(job: SampledDataset, out: Path, num_processes: int) -> dict[str, Any]:
    """List every finished (and selected) sample in dataset.yaml; write manifest.json and
    grid.png; returns the manifest."""
    records = sorted(_done_records(out).values(), key=lambda r: r["index"])
    if job.select is not None:
        for record, keep in zip(records, job.select(records), strict=True):
            record["kept"] = bool(keep)
            if not keep:
                _remove_sample_files(out, record["id"])
    listed = [r["id"] for r in records if r.get("kept", True)]
    target = _open_target(job, out, flush_every=None)
    target.list_samples(listed)
    timings = [json.loads(p.read_text()) for p in sorted((out / STATE_DIR).glob("timing-*.json"))]
    manifest: dict[str, Any] = {
        **job.settings,
        "num_samples": len(records),
        "num_processes": num_processes,
        "batch_size": job.batch_size,
        "generated_this_session": {
            "samples": sum(t["samples"] for t in timings),
            "process_seconds": sum(t["seconds"] for t in timings),
        },
        "samples": records,
    }
    if job.summarize is not None:
        manifest.update(job.summarize(records))
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
    # A rerun that sampled nothing keeps its grid (the same samples: nothing to redraw).
    if manifest["generated_this_session"]["samples"] or not (out / "grid.png").exists():
        target.write_grid(listed[:GRID_SAMPLES])
    return manifest


# -- resume state ----------------------------------------------------------------------------


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Raise if `out` was written with other settings (every process checks, so all stop)."""
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


# Entry keys not compared on resume: the path (a run folder may move) and what the run's record
# says about its labels (a function of the weights whose hashes are compared; sets started
# before label budgets were recorded lack them).
_UNCOMPARED_ENTRY_KEYS = ("path", "reads_masks", "label_budget")


def _without_paths(settings: dict[str, Any]) -> dict[str, Any]:
    checkpoints = {
        role: {k: v for k, v in entry.items() if k not in _UNCOMPARED_ENTRY_KEYS}
        for role, entry in settings.get("checkpoints", {}).items()
    }
    return {**settings, "checkpoints": checkpoints}


def _prepare_state(out: Path, settings: dict[str, Any]) -> None:
    """Main process: store the settings of a new output; drop timings of an earlier session and
    the temporary files that killed processes left (their samples have no record, so they are
    drawn again)."""
    state = out / STATE_DIR
    (state / "records").mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "images", out / "masks", state, state / "records"):
        for stray in iter_tmp_files(folder):
            stray.unlink(missing_ok=True)
    if not (state / "settings.json").exists():
        atomic_write_text(state / "settings.json", json.dumps(settings, indent=2))
    for stale in state.glob("timing-*.json"):
        stale.unlink()


def _done_records(out: Path) -> dict[str, Record]:
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
            # Records are written atomically, so this one was damaged afterwards: draw that
            # sample again (its files are overwritten).
            warnings.warn(f"{path}: damaged record; generating {path.stem} again", stacklevel=2)
            path.unlink(missing_ok=True)
    return records


def _check_count(out: Path, done: dict[str, Record], job: SampledDataset) -> None:
    """Refuse --n smaller than what `out` already holds: keeping the extra samples would make
    the dataset larger than asked, deleting them would lose work; the user decides."""
    extra = sorted(r["index"] for r in done.values() if r.get("index", 0) >= job.num_samples)
    if extra:
        raise PairforgeError(
            f"{out}: already holds {len(done)} {job.noun} (up to {job.sample_id(extra[-1])}), "
            f"more than --n {job.num_samples}; pass --n {max(extra) + 1} or more to resume or "
            f"extend it, or a new --out for a dataset of {job.num_samples} {job.noun}."
        )


def _open_target(job: SampledDataset, out: Path, flush_every: int | None):
    from pairforge.core.dataset_writer_targets import DatasetTarget, MaskFolderTarget

    if not job.has_images:
        return MaskFolderTarget(out, [c.id for c in job.spec.classes], job.spec.class_colors)
    return DatasetTarget(out, job.spec, flush_every)


def _remove_sample_files(out: Path, sample_id: str) -> None:
    for folder in ("images", "masks"):
        for path in (out / folder).glob(f"{sample_id}.*"):
            path.unlink(missing_ok=True)
