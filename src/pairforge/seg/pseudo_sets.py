"""The folders `seg pseudolabel` writes: the thresholded set OUT and the filled set DIR, sharded.

OUT holds the head's confident labels (ignore elsewhere, see `pseudolabel`); the optional
filled set DIR (`--filled-out`) holds a mask at every pixel, for generators (joint, mask, sdm
models need one): the head's argmax everywhere, the TRUE label inside the head budget's fit
tiles and the head's argmax (never the true label) inside its select tiles, so a generator
trained on DIR reads no select-tile label. Both are written in the same pass, from the same
segmentation.

Sharding (`accelerate launch --num_processes R`): process r labels ids[r::R] and writes only
the files of its measurements (images, masks, uncertainty, soft, records); dataset.yaml and
pseudolabel.json are written once, by the main process after the last barrier, from every
process's records (as `core.dataset_writer.write_sampled_dataset` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.io import atomic_write, atomic_write_json, ensure_writable_dir

PSEUDO_RECORD = "pseudolabel.json"
STATE_DIR = ".pseudolabel"
FILLED_LABELS = (
    "filled: every pixel has a label (for generators): the head's argmax everywhere, the true "
    "label inside the head budget's fit tiles (where labeled), the head's argmax (not the true "
    "label) inside its select tiles, so no select-tile label is read"
)


def filled_mask(labels: np.ndarray, truth: np.ndarray | None, fit_region: np.ndarray) -> np.ndarray:
    """int64 (H, W): the head's argmax `labels`, with the true labels (`truth`, budget view;
    its ignore pixels keep the argmax) in `fit_region`. Select tiles keep the argmax."""
    mask = np.asarray(labels).astype(np.int64, copy=True)
    if truth is not None:
        take = fit_region & (truth != IGNORE_INDEX)
        mask[take] = truth[take]
    return mask


def out_spec(dataset, suffix: str = "pseudo"):
    """D's spec for a written set: same channels, classes and normalization; no splits; an
    ignore id (the thresholded set needs one; the filled set declares it unused)."""
    from pairforge.data.spec import NormalizationSpec

    spec = dataset.spec.model_copy(deep=True)
    spec.name = f"{dataset.spec.name}-{suffix}"
    spec.splits = {}
    spec.mask_encoding = "ids"
    ids = {c.id for c in spec.classes}
    spec.ignore_index = spec.ignore_index if spec.ignore_index is not None else (
        255 if 255 not in ids else 65535)  # fmt: skip
    spec.normalization = NormalizationSpec(**dataset.normalizer.to_dict())
    return spec


def _has_pair(folder: Path, sample_id: str) -> bool:
    masks = any((folder / "masks" / f"{sample_id}{s}").exists() for s in (".png", ".tif"))
    return masks and (folder / "images" / f"{sample_id}.tif").exists()


class PseudoSets:
    """The writers of OUT (and DIR when `filled_out`) for one process; no dataset.yaml is
    written until `finish` (main process only), so processes never write the same file."""

    def __init__(self, out, filled_out, dataset, soft: bool):
        from pairforge.data.dataset import DatasetWriter

        self.out = Path(out)
        self.filled = None if filled_out is None else Path(filled_out)
        self.soft = soft
        self.records_dir = self.out / STATE_DIR / "records"
        for folder in (self.records_dir, self.out / "uncertainty", self.out / "soft"):
            if folder.name != "soft" or soft:
                ensure_writable_dir(folder, "pseudo-label folder")
        self.writer = DatasetWriter(self.out, out_spec(dataset), flush_every=None)
        self.filled_writer = None
        if self.filled is not None:
            spec = out_spec(dataset, "pseudo-filled")
            self.filled_writer = DatasetWriter(self.filled, spec, flush_every=None)

    def done(self, sample_id: str) -> bool:
        """A measurement is done when its record (written last) and every file of both sets exist."""
        out = self.out
        files = [out / "uncertainty" / f"{sample_id}.tif", self.records_dir / f"{sample_id}.json"]
        if self.soft:
            files.append(out / "soft" / f"{sample_id}.npy")
        if self.filled is not None and not _has_pair(self.filled, sample_id):
            return False
        return _has_pair(out, sample_id) and all(f.exists() for f in files)

    def record(self, sample_id: str) -> dict[str, Any]:
        return json.loads((self.records_dir / f"{sample_id}.json").read_text())

    def write(self, sample_id, image, mask, maps, probs, filled, record, split: str) -> None:
        """Every file of one measurement; its record last (the measurement is then done)."""
        import tifffile

        self.writer.add(sample_id, image, mask, split=split)
        atomic_write(self.out / "uncertainty" / f"{sample_id}.tif",
                     lambda p: tifffile.imwrite(p, maps))  # fmt: skip
        if self.soft:
            array = probs.astype(np.float16)

            def save(path: Path) -> None:
                with open(path, "wb") as f:
                    np.save(f, array)

            atomic_write(self.out / "soft" / f"{sample_id}.npy", save)
        if self.filled_writer is not None:
            self.filled_writer.add(sample_id, image, filled, split=split)
        atomic_write_json(self.records_dir / f"{sample_id}.json", record)

    def finish(self, ids: list[str], split: str, summary: dict[str, Any]) -> None:
        """Main process, after every process is done: dataset.yaml listing the finished ids of
        `ids` (in order) and pseudolabel.json, of OUT and DIR."""
        done = [i for i in ids if self.done(i)]
        self.writer.spec.splits = {split: done}
        self.writer.flush()
        atomic_write_json(self.out / PSEUDO_RECORD, {**summary, "filled": False})
        if self.filled_writer is not None:
            self.filled_writer.spec.splits = {split: done}
            self.filled_writer.flush()
            atomic_write_json(self.filled / PSEUDO_RECORD,
                              {**summary, "filled": True, "filled_labels": FILLED_LABELS})  # fmt: skip


def shard_ids(ids: list[str], process_index: int, num_processes: int) -> list[str]:
    """This process's measurements: ids[process_index::num_processes]."""
    return list(ids[process_index::num_processes])


def write_segmented(out: Path, process_index: int, segmented: list[str]) -> None:
    atomic_write_json(Path(out) / STATE_DIR / f"segmented-{process_index}.json", segmented)


def read_segmented(out: Path, num_processes: int) -> list[str]:
    """The ids every process labeled in this call (main process, after the barrier)."""
    found: list[str] = []
    for r in range(num_processes):
        path = Path(out) / STATE_DIR / f"segmented-{r}.json"
        if path.exists():
            found.extend(json.loads(path.read_text()))
    return found
