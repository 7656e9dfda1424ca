"""Sampling a trained image / joint / mask run into a dataset folder in physical units."""

from __future__ import annotations

from pathlib import Path

import torch

from pairforge.errors import PairforgeError

ID_FORMAT = "sample-{seed:06d}"


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
    `pairforge generate --pipeline joint --seed 0` (joint runs) or `seg autolabel` (any run),
    and written by `core.dataset_writer.write_sampled_dataset`, the writer of both.

    image / joint runs: OUT is a standard dataset (dataset.yaml, images/<id>.tif in physical
    units, masks/<id>.png decoded by the codec for joint runs), ids `sample-<seed>`. mask runs:
    OUT/masks/<id>.png (class ids) only, since a mask-only model makes no image. Also writes
    OUT/grid.png and OUT/manifest.json (settings, checkpoint hashes, one record per sample);
    an interrupted call repeated with the same settings resumes (OUT/.generate/).
    """
    from pairforge.core.dataset_writer import (
        DrawnBatch,
        single_run_dataset,
        write_sampled_dataset,
    )
    from pairforge.core.run import load_run
    from pairforge.core.unconditional import SamplingSettings, draw_unconditional
    from pairforge.precision import resolve_precision

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
    # The same resolution as training and generate: explicit bf16 without native support warns.
    precision = resolve_precision("bf16" if bf16 else "fp32", torch.device(device).type)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    sampling = SamplingSettings(sampler, steps, device, dtype, progress=False)

    def draw(indices: list[int], seeds: list[int]) -> DrawnBatch:
        drawn = draw_unconditional(run, seeds, sampling)
        images = None if drawn.images is None else run.normalizer.decode(drawn.images.cpu().numpy())
        masks = None if drawn.masks is None else drawn.masks.cpu().numpy()
        return DrawnBatch(images, masks)

    job = single_run_dataset(
        run, run_dir, f"{run.spec.name}-samples", sampling, draw, n, seed, batch_size,
        id_format=ID_FORMAT, folder_label="sample folder", noun="samples",
        has_images=run.task_spec.has_image_part, progress_desc=f"sample {run.task}",
        progress_unit="img",
    )  # fmt: skip
    write_sampled_dataset(job, out, progress=progress)
    return Path(out)
