"""`DatasetWriter`: writes samples in the standard dataset format, atomically and resumably."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.layout import IMAGE_DIR, MASK_DIR, check_link
from pairforge.data.spec import SPEC_FILE, DatasetSpec, check_sample_id, read_spec
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, ensure_writable_dir, write_error


def _atomic_write(path: Path, write, what: str) -> None:
    """Write via a hidden temporary file in the same folder, then rename: no half-written files.

    OSErrors (disk full, read-only file system) become PairforgeErrors naming `path` and the fix.
    """
    try:
        atomic_write(path, write)
    except OSError as err:
        raise write_error(path, what, err) from None


class DatasetWriter:
    """Writes samples in the standard format; dataset.yaml is rewritten atomically as it goes.

    Resumable: opening an existing folder keeps the samples its dataset.yaml lists, and
    `has(id)` tells which are done. Images are float32 TIFF (C, H, W), masks PNG of class ids
    (16-bit TIFF when an id exceeds 255).
    """

    def __init__(self, path: str | Path, spec: DatasetSpec, flush_every: int | None = 32):
        self.root = Path(path)
        # An existing file, a read-only disk or a full one: a PairforgeError naming the folder.
        ensure_writable_dir(self.root, "dataset folder")
        for folder in (IMAGE_DIR, MASK_DIR):
            check_link(self.root / folder)
            ensure_writable_dir(self.root / folder, f"dataset {folder}/ folder")
        self.spec = spec.model_copy(deep=True)
        self.spec.mask_encoding = "ids"
        self.spec.splits = {k: list(v) for k, v in spec.splits.items()}
        existing = self.root / SPEC_FILE
        if existing.exists():
            previous = read_spec(existing)
            for split, members in previous.splits.items():
                known = self.spec.splits.setdefault(split, [])
                known.extend(m for m in members if m not in known)
        self._done = {i for members in self.spec.splits.values() for i in members}
        self._index_to_id = np.array([c.id for c in self.spec.classes] + [0], dtype=np.int64)
        self._pending = 0
        self.flush_every = flush_every

    def has(self, sample_id: str) -> bool:
        return sample_id in self._done

    def add(self, sample_id: str, image: np.ndarray, mask=None, split: str = "train") -> None:
        """image: (C, H, W) physical units; mask: (H, W) class indices 0..K-1 (255 ignore) or None."""
        import tifffile

        check_sample_id(sample_id, str(self.root))
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[0] != self.spec.num_channels:
            raise PairforgeError(
                f"sample {sample_id!r}: image shape {image.shape} does not match "
                f"{self.spec.num_channels} channels (C, H, W)"
            )
        bad = (~np.isfinite(image)).reshape(image.shape[0], -1).sum(axis=1)
        if bad.any():  # reading it back would fail: refuse to write it in the first place
            listing = ", ".join(
                f"{int(n)} in channel {name!r}"
                for name, n in zip(self.spec.channel_names, bad)
                if n
            )
            raise PairforgeError(
                f"sample {sample_id!r}: image has non-finite values (NaN/inf): {listing}; not "
                f"written to {self.root}. Fill them in the source data (or, for generated "
                "samples, check the model for NaN weights)"
            )
        img_path = self.root / IMAGE_DIR / f"{sample_id}.tif"
        _atomic_write(
            img_path,
            lambda p: tifffile.imwrite(p, image, photometric="minisblack", compression="zlib"),
            "sample image",
        )
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != image.shape[1:]:
                raise PairforgeError(
                    f"sample {sample_id!r}: mask shape {mask.shape} differs from image "
                    f"{image.shape[1:]}"
                )
            self._write_mask(sample_id, mask)
        if sample_id not in self._done:
            self.spec.splits.setdefault(split, []).append(sample_id)
            self._done.add(sample_id)
        self._pending += 1
        if self.flush_every is not None and self._pending >= self.flush_every:
            self.flush()

    def _write_mask(self, sample_id: str, mask: np.ndarray) -> None:
        indices = mask.astype(np.int64)
        k = self.spec.num_classes
        bad = np.unique(indices[(indices < 0) | ((indices >= k) & (indices != IGNORE_INDEX))])
        if bad.size:
            raise PairforgeError(
                f"sample {sample_id!r}: mask has class indices {bad.tolist()} outside 0..{k - 1}"
            )
        lut = self._index_to_id.copy()
        ids = np.where(indices == IGNORE_INDEX, -1, lut[np.clip(indices, 0, k)])
        if (ids == -1).any():
            if self.spec.ignore_index is None:
                self.spec.ignore_index = 255 if 255 not in lut[:k] else 65535
            ids = np.where(ids == -1, self.spec.ignore_index, ids)
        if ids.max(initial=0) < 256:
            from PIL import Image

            path = self.root / MASK_DIR / f"{sample_id}.png"
            _atomic_write(
                path,
                lambda p: Image.fromarray(ids.astype(np.uint8)).save(p, format="PNG"),
                "sample mask",
            )
        else:
            import tifffile

            path = self.root / MASK_DIR / f"{sample_id}.tif"
            _atomic_write(path, lambda p: tifffile.imwrite(p, ids.astype(np.uint16)), "sample mask")

    def flush(self) -> None:
        """Rewrite dataset.yaml so it lists every sample written so far."""
        text = self.spec.to_yaml()
        _atomic_write(
            self.root / SPEC_FILE, lambda p: p.write_text(text, encoding="utf-8"), "dataset.yaml"
        )
        self._pending = 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
