"""The standard pairforge dataset on disk: read it (`load_dataset`) and write it (`DatasetWriter`)."""

from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.files import decode_color_mask, read_array
from pairforge.data.layout import (
    IMAGE_DIR,
    IMAGE_SUFFIXES,
    MASK_DIR,
    MASK_SUFFIXES,
    check_folder,
    check_link,
    discover_ids,
    unlisted_image_files,
)
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import SPEC_FILE, DatasetSpec, read_spec
from pairforge.data.writer import DatasetWriter
from pairforge.errors import PairforgeError

# DatasetWriter and read_array are part of this module's API (docs/ARCHITECTURE.md).
__all__ = ["Dataset", "DatasetWriter", "load_dataset", "read_array"]


def _to_chw(arr: np.ndarray, num_channels: int, path: Path) -> np.ndarray:
    """Bring a stored image to (C, H, W), accepting (H, W), (C, H, W) and (H, W, C)."""
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[0] != num_channels and arr.shape[-1] == num_channels:
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim != 3 or arr.shape[0] != num_channels:
        raise PairforgeError(
            f"{path}: has shape {arr.shape}, expected {num_channels} channel(s) as declared in "
            f"{SPEC_FILE} (channels (C, H, W) or (H, W, C)); fix the file or the channels list"
        )
    return arr


class Dataset:
    """A loaded dataset: spec plus lazily read images (physical units) and masks (class indices)."""

    def __init__(self, root: Path, spec: DatasetSpec):
        self.root = root
        self.spec = spec
        # No masks/ means unlabeled, and without images/ each listed sample reports its missing
        # image below; but a looping link or an unreadable folder must not pass as empty.
        has_images = check_folder(root / IMAGE_DIR, "images")
        check_folder(root / MASK_DIR, "masks")
        listed = [i for members in spec.splits.values() for i in members]
        if not listed and not has_images:
            raise PairforgeError(
                f"{root / IMAGE_DIR}: folder not found; images go in {IMAGE_DIR}/ next to "
                f"{SPEC_FILE}"
            )
        if listed:
            self._ids = list(dict.fromkeys(listed))
            unlisted = unlisted_image_files(root, spec)
            if unlisted:
                warnings.warn(
                    f"{root / IMAGE_DIR}: {len(unlisted)} image file(s) in no split are skipped "
                    f"({', '.join(unlisted[:5])}{', ...' if len(unlisted) > 5 else ''}); add "
                    f"them to splits in {SPEC_FILE} or remove them",
                    stacklevel=3,
                )
        else:
            self._ids = sorted(discover_ids(root / IMAGE_DIR, spec))
        # class id -> class index; everything else is unknown (ignore_index -> IGNORE_INDEX).
        self._id_to_index = {c.id: i for i, c in enumerate(spec.classes)}
        self._files = {i: self._find_image_files(i) for i in self._ids}

    # -- ids and splits -------------------------------------------------------------------
    def ids(self, split: str | None = None) -> list[str]:
        """Sample ids of a split (None: all samples)."""
        if split is None:
            return list(self._ids)
        if split not in self.spec.splits:
            raise PairforgeError(
                f"{self.root / SPEC_FILE}: no split named {split!r}; splits are "
                f"{sorted(self.spec.splits)}"
            )
        return list(self.spec.splits[split])

    @property
    def num_channels(self) -> int:
        """Channels C of every image, as dataset.yaml declares them."""
        return self.spec.num_channels

    @property
    def num_classes(self) -> int:
        """Mask classes K (class indices 0..K-1; 0 for a dataset without classes)."""
        return self.spec.num_classes

    # -- files ----------------------------------------------------------------------------
    def image_files(self, sample_id: str) -> list[Path]:
        """The stored file(s) of a sample's image: one (C, H, W) file or one file per channel."""
        return self._files.get(sample_id) or self._find_image_files(sample_id)

    def _find_image_files(self, sample_id: str) -> list[Path]:
        folder = self.root / IMAGE_DIR
        for suffix in IMAGE_SUFFIXES:
            p = folder / f"{sample_id}{suffix}"
            check_link(p)
            if p.exists():
                return [p]
        per_channel = []
        for ch in self.spec.channel_names:
            found = [folder / f"{sample_id}_{ch}{s}" for s in IMAGE_SUFFIXES]
            for p in found:
                check_link(p)
            found = [p for p in found if p.exists()]
            if not found:
                break
            per_channel.append(found[0])
        if len(per_channel) == self.num_channels:
            return per_channel
        raise PairforgeError(
            f"{folder}: no image for sample {sample_id!r}; expected {sample_id}.tif/.npy/.png or "
            f"one file per channel ({', '.join(f'{sample_id}_{c}.png' for c in self.spec.channel_names)})"
        )

    def mask_path(self, sample_id: str) -> Path | None:
        """The mask file of a sample, None if it has none (a broken link raises)."""
        for suffix in MASK_SUFFIXES:
            p = self.root / MASK_DIR / f"{sample_id}{suffix}"
            check_link(p)
            if p.exists():
                return p
        return None

    def has_mask(self, sample_id: str) -> bool:
        return self.mask_path(sample_id) is not None

    # -- reading --------------------------------------------------------------------------
    def read_image(self, sample_id: str) -> np.ndarray:
        """float32 (C, H, W) in physical units, all finite (NaN/inf raise PairforgeError)."""
        files = self.image_files(sample_id)
        if len(files) == 1:
            arr = _to_chw(read_array(files[0]), self.num_channels, files[0])
        else:
            planes = []
            for path in files:
                plane = read_array(path)
                if plane.ndim != 2:
                    raise PairforgeError(
                        f"{path}: expected a single-channel image, got shape {plane.shape}"
                    )
                planes.append(plane)
            shapes = {p.shape for p in planes}
            if len(shapes) != 1:
                raise PairforgeError(
                    f"sample {sample_id!r}: channel files have different sizes "
                    f"{[p.shape for p in planes]} ({', '.join(str(f) for f in files)})"
                )
            arr = np.stack(planes)
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise PairforgeError(f"{files[0]}: unsupported pixel type {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        self._check_finite(arr, files)
        return arr

    def image_size(self, sample_id: str) -> tuple[int, int]:
        """(H, W) of a sample's image in px (read once, then remembered)."""
        sizes = self.__dict__.setdefault("_sizes", {})
        if sample_id not in sizes:
            sizes[sample_id] = tuple(int(n) for n in self.read_image(sample_id).shape[1:])
        return sizes[sample_id]

    def _check_finite(self, arr: np.ndarray, files: list[Path]) -> None:
        """Raise naming the file, channel and count if (C, H, W) `arr` holds NaN or inf.

        Models trained on NaN end with NaN weights, so such pixels are refused at load.
        """
        bad = (~np.isfinite(arr)).reshape(arr.shape[0], -1).sum(axis=1)
        if not bad.any():
            return
        pixels = arr.shape[1] * arr.shape[2]
        listing = ", ".join(
            f"{int(n)} of {pixels} in channel {name!r}"
            for name, n in zip(self.spec.channel_names, bad)
            if n
        )
        c = int(np.flatnonzero(bad)[0])
        where = files[c] if len(files) > 1 else files[0]
        raise PairforgeError(
            f"{where}: non-finite pixel values (NaN/inf): {listing}; fill them (e.g. with the "
            "channel median or an inpainting) or crop them away and re-export the file"
        )

    def read_mask(self, sample_id: str, expected_shape: tuple[int, int] | None = None):
        """int64 (H, W) class indices 0..K-1 (unlabeled pixels: 255), or None if unlabeled."""
        path = self.mask_path(sample_id)
        if path is None:
            return None
        raw = read_array(path)
        if self.spec.mask_encoding == "color":
            mask = self._decode_colors(raw, path)
        else:
            if raw.ndim == 3 and raw.shape[-1] in (3, 4):
                raise PairforgeError(
                    f"{path}: is a color image but {SPEC_FILE} says mask_encoding: ids; set "
                    "mask_encoding: color and give each class a color, or store class ids"
                )
            if raw.ndim != 2:
                raise PairforgeError(f"{path}: a mask must be (H, W), got shape {raw.shape}")
            mask = self._map_ids(raw, path)
        if expected_shape is not None and mask.shape != tuple(expected_shape):
            raise PairforgeError(
                f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its image "
                f"{expected_shape[1]}x{expected_shape[0]}; masks must match their images pixel "
                "for pixel"
            )
        return mask

    def read_pair(self, sample_id: str):
        """(image float32 (C,H,W), mask int64 (H,W) or None), sizes checked against each other."""
        image = self.read_image(sample_id)
        return image, self.read_mask(sample_id, expected_shape=image.shape[1:])

    def _map_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if not np.issubdtype(raw.dtype, np.integer):
            if np.any(raw != np.round(raw)):
                raise PairforgeError(f"{path}: mask holds non-integer values; store class ids")
            raw = raw.astype(np.int64)
        values, counts = np.unique(raw, return_counts=True)
        lut_keys = dict(self._id_to_index)
        if self.spec.ignore_index is not None:
            lut_keys[self.spec.ignore_index] = IGNORE_INDEX
        unknown = [(int(v), int(c)) for v, c in zip(values, counts) if int(v) not in lut_keys]
        if unknown:
            listing = ", ".join(f"{v} ({c} px)" for v, c in unknown[:10])
            raise PairforgeError(
                f"{path}: unknown class ids {listing}; declared ids are "
                f"{sorted(self._id_to_index)}; add them to classes in {SPEC_FILE} or set "
                "ignore_index (nothing is mapped to background silently)"
            )
        out = np.empty(raw.shape, dtype=np.int64)
        for v in values:
            out[raw == v] = lut_keys[int(v)]
        return out

    def _decode_colors(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim != 3 or raw.shape[-1] not in (3, 4):
            raise PairforgeError(
                f"{path}: mask_encoding is color but the mask has shape {raw.shape}; expected an "
                "RGB image"
            )
        return decode_color_mask(
            raw, self.spec.class_colors, path,
            fix=f"add a class with that color to {SPEC_FILE} (antialiased edges must be removed: "
            "save masks without smoothing)",
        )  # fmt: skip

    # -- normalization --------------------------------------------------------------------
    @cached_property
    def normalizer(self) -> ChannelNormalizer:
        """From dataset.yaml if declared, else robust percentiles of the train split.

        A dataset without any splits is all training data and is fitted on every sample. With
        splits but none named `train` there is no safe choice (fitting on val/test leaks them into
        the model), so that raises.
        """
        if self.spec.normalization is not None:
            return ChannelNormalizer(self.spec.normalization.low, self.spec.normalization.high)
        if not self.spec.splits:
            ids = self._ids
        elif self.spec.splits.get("train"):
            ids = self.spec.splits["train"]
        else:
            raise PairforgeError(
                f"{self.root / SPEC_FILE}: dataset {self.spec.name!r} has no (non-empty) split "
                f"named 'train' (splits: {sorted(self.spec.splits)}), so the normalization "
                "would be fitted on val/test data; add a 'train' split, or declare "
                "normalization: {low: [...], high: [...]} with one value per channel"
            )
        return ChannelNormalizer.fit(
            (self.read_image(i) for i in ids), names=self.spec.channel_names
        )

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.root}, {len(self)} samples, channels={self.spec.channel_names}, "
            f"classes={[c.name for c in self.spec.classes]})"
        )


def load_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder: validates dataset.yaml and that every sample has its image files.

    Pixel-level checks (corrupt files, channel counts, unknown class ids, sizes) happen when a
    sample is read; `pairforge data check` reads everything.
    """
    root = Path(path)
    check_link(root)
    if not root.exists():
        raise PairforgeError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise PairforgeError(f"{root}: is a file; pass the dataset folder that holds {SPEC_FILE}")
    return Dataset(root, read_spec(root))
