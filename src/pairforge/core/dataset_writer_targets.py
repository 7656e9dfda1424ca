"""Where the sampling writer (`core.dataset_writer`) puts samples: a standard dataset or, for a
mask-only run, a folder of mask files; and the grid.png of each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pairforge.io import atomic_write

GRID_FILE = "grid.png"


class DatasetTarget:
    """A standard dataset (`data.dataset.DatasetWriter`) and its grid."""

    def __init__(self, out: Path, spec, flush_every: int | None):
        from pairforge.data.dataset import DatasetWriter

        self.out = out
        self.writer = DatasetWriter(out, spec, flush_every=flush_every)
        self.add = self.writer.add
        self.flush = self.writer.flush

    def list_samples(self, ids: list[str]) -> None:
        self.writer.spec.splits = {"train": list(ids)}
        self.writer.flush()

    def write_grid(self, ids: Sequence[str]) -> Path | None:
        return write_grid(self.out, ids)


class MaskFolderTarget:
    """OUT/masks/<id>.png with class ids (uint8, or 16-bit TIFF above 255); no dataset.yaml,
    since a mask-only model makes no image."""

    def __init__(self, out: Path, class_ids: list[int], class_colors):
        self.out = Path(out)
        self.folder = self.out / "masks"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lookup = np.array(class_ids, dtype=np.int64)
        self.class_colors = class_colors

    def add(self, sample_id: str, image, mask, split: str = "train") -> None:
        import tifffile
        from PIL import Image

        ids = self.lookup[np.asarray(mask, dtype=np.int64)]
        if ids.max() < 256:
            png = Image.fromarray(ids.astype(np.uint8))
            atomic_write(self.folder / f"{sample_id}.png", lambda tmp: png.save(tmp, "PNG"))
        else:
            atomic_write(
                self.folder / f"{sample_id}.tif",
                lambda tmp: tifffile.imwrite(tmp, ids.astype(np.uint16)),
            )

    def flush(self) -> None:
        return None

    def list_samples(self, ids: list[str]) -> None:
        return None

    def write_grid(self, ids: Sequence[str]) -> Path | None:
        """grid.png of the masks alone (`viz.save_grid` with images None)."""
        if not ids:
            return None
        import tifffile
        from PIL import Image

        from pairforge.viz import save_grid

        index_of = {int(class_id): k for k, class_id in enumerate(self.lookup)}
        masks = []
        for sample_id in ids:
            png = self.folder / f"{sample_id}.png"
            tif = png.with_suffix(".tif")
            raw = np.asarray(Image.open(png)) if png.exists() else tifffile.imread(tif)
            masks.append(np.vectorize(index_of.__getitem__)(raw.astype(np.int64)))
        return save_grid(
            self.out / GRID_FILE, None, np.stack(masks), class_colors=self.class_colors,
            max_items=len(masks),
        )  # fmt: skip


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
