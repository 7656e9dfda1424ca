"""Sampling a trained image / joint / mask run into a dataset folder in physical units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, ensure_writable_dir


def sample_run_to_dataset(
    run_dir: Path,
    out: Path,
    n: int,
    sampler: str = "dpm++",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    bf16: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Sample n items with seeds seed..seed+n-1 from RUN into OUT; returns OUT.

    Sample seed s is drawn by `core.unconditional.draw_unconditional`, the same as sample s of
    `pairforge generate --pipeline joint --seed 0` (joint runs) or `seg autolabel` (any run).

    image / joint runs: OUT is a standard dataset (dataset.yaml, images/<id>.tif in physical
    units, masks/<id>.png decoded by the codec for joint runs), ids `sample-<seed>`; already
    written ids are skipped, so an interrupted call can be repeated. mask runs: OUT/masks/<id>.png
    (class ids) only, since a mask-only model makes no image. Also writes OUT/grid.png.
    """
    from tqdm.auto import tqdm

    from pairforge.core.run import load_run
    from pairforge.core.unconditional import SamplingSettings, draw_unconditional
    from pairforge.viz import save_grid

    if n < 1:
        raise PairforgeError(f"--n {n}: the number of samples must be >= 1.")
    if batch_size < 1:
        raise PairforgeError(f"--batch-size {batch_size}: must be >= 1.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = load_run(run_dir, device=device)
    if not run.task_spec.unconditional:
        raise PairforgeError(
            f"{run_dir} is a {run.task!r} run, which needs a condition (mask or low-res image); "
            "use `pairforge generate` for sdm / sr runs."
        )
    settings = SamplingSettings(
        sampler, steps, device, torch.bfloat16 if bf16 else torch.float32, progress=False
    )
    out = ensure_writable_dir(out, "sample folder")
    seeds = [seed + i for i in range(n)]
    writer = _open_writer(run, out)
    todo = [s for s in seeds if not writer.has(f"sample-{s:06d}")]
    grid_images, grid_masks = [], []
    bar = tqdm(total=len(todo), desc=f"sample {run.task}", disable=not progress, unit="img")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        drawn = draw_unconditional(run, chunk, settings)
        images = drawn.images.cpu() if drawn.images is not None else None
        masks = drawn.masks.cpu() if drawn.masks is not None else None
        for i, s in enumerate(chunk):
            physical = run.normalizer.decode(images[i].numpy()) if images is not None else None
            mask = masks[i].numpy() if masks is not None else None
            writer.add(f"sample-{s:06d}", physical, mask, split="train")
        if len(grid_images) + len(grid_masks) < 16:
            grid_images.append(images[:8] if images is not None else None)
            grid_masks.append(masks[:8] if masks is not None else None)
        bar.update(len(chunk))
    bar.close()
    writer.close()
    if grid_images:
        images = None if grid_images[0] is None else torch.cat(grid_images)[:8].numpy()
        masks = None if grid_masks[0] is None else torch.cat(grid_masks)[:8].numpy()
        save_grid(out / "grid.png", images, masks, class_colors=run.spec.class_colors)
    return out


def _open_writer(run, out: Path):
    if not run.task_spec.has_image_part:  # a mask-only model makes no image
        return _MaskFolderWriter(out, [c.id for c in run.spec.classes])
    from pairforge.data.dataset import DatasetWriter
    from pairforge.data.spec import NormalizationSpec

    spec = run.spec.model_copy(deep=True)
    spec.name = f"{spec.name}-samples"
    spec.splits = {}
    spec.mask_encoding = "ids"
    # Same normalization as training, so the samples encode exactly as the model made them.
    normalizer = run.normalizer.to_dict()
    spec.normalization = NormalizationSpec(low=normalizer["low"], high=normalizer["high"])
    return DatasetWriter(out, spec)


class _MaskFolderWriter:
    """OUT/masks/<id>.png with class ids (uint8, or 16-bit TIFF above 255)."""

    def __init__(self, out: Path, class_ids: list[int]):
        self.folder = Path(out) / "masks"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lookup = np.array(class_ids, dtype=np.int64)

    def has(self, sample_id: str) -> bool:
        return any(self.folder.glob(f"{sample_id}.*"))

    def add(self, sample_id: str, image, mask, split: str = "train") -> None:
        import tifffile
        from PIL import Image

        # Atomic: `has` counts any file as done, so a killed call must not leave half of one.
        ids = self.lookup[mask]
        if ids.max() < 256:
            png = Image.fromarray(ids.astype(np.uint8))
            atomic_write(self.folder / f"{sample_id}.png", lambda tmp: png.save(tmp, "PNG"))
        else:
            atomic_write(
                self.folder / f"{sample_id}.tif",
                lambda tmp: tifffile.imwrite(tmp, ids.astype(np.uint16)),
            )

    def close(self) -> None:
        return None
