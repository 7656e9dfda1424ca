"""The standard pairforge dataset on disk: read it (`load_dataset`) and write it (`DatasetWriter`)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import SPEC_FILE, DatasetSpec, read_spec
from pairforge.errors import PairforgeError

IMAGE_DIR = "images"
MASK_DIR = "masks"
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
IGNORE = 255  # class index used in loaded masks for unlabeled pixels


def read_array(path: Path) -> np.ndarray:
    """Read an image file (TIFF, NPY, PNG) as stored, raising PairforgeError if it is corrupt."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGB")
            return np.asarray(im)
    except PairforgeError:
        raise
    except Exception as err:  # any decoder failure means a corrupt or foreign file
        raise PairforgeError(
            f"{path}: cannot be read ({type(err).__name__}: {err}); the file is corrupt or not "
            "an image: re-export it, or remove the sample from dataset.yaml"
        ) from err


def decode_color_mask(rgb: np.ndarray, colors, path: Path, fix: str) -> np.ndarray:
    """(H, W, 3|4) color mask -> int64 (H, W) index of the matching color; unknown colors raise."""
    rgb = rgb[..., :3].astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colors)}
    values, counts = np.unique(code, return_counts=True)
    unknown = [(int(v), int(c)) for v, c in zip(values, counts) if int(v) not in lut]
    if unknown:
        listing = ", ".join(
            f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) ({c} px)" for v, c in unknown[:10]
        )
        raise PairforgeError(
            f"{path}: unknown mask colors {listing}; declared colors are "
            f"{[list(c) for c in colors]}; {fix}"
        )
    out = np.empty(code.shape, dtype=np.int64)
    for v in values:
        out[code == v] = lut[int(v)]
    return out


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


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder, then rename: no half-written files."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Dataset:
    """A loaded dataset: spec plus lazily read images (physical units) and masks (class indices)."""

    def __init__(self, root: Path, spec: DatasetSpec):
        self.root = root
        self.spec = spec
        listed = [i for members in spec.splits.values() for i in members]
        if listed:
            self._ids = list(dict.fromkeys(listed))
        else:
            self._ids = sorted(_discover_ids(root / IMAGE_DIR, spec))
        # class id -> class index; everything else is unknown (ignore_index -> IGNORE).
        self._id_to_index = {c.id: i for i, c in enumerate(spec.classes)}
        self._files = {i: self._image_files(i) for i in self._ids}

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
        return self.spec.num_channels

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    # -- files ----------------------------------------------------------------------------
    def _image_files(self, sample_id: str) -> list[Path]:
        folder = self.root / IMAGE_DIR
        for suffix in IMAGE_SUFFIXES:
            p = folder / f"{sample_id}{suffix}"
            if p.exists():
                return [p]
        per_channel = []
        for ch in self.spec.channel_names:
            found = [folder / f"{sample_id}_{ch}{s}" for s in IMAGE_SUFFIXES]
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
        for suffix in MASK_SUFFIXES:
            p = self.root / MASK_DIR / f"{sample_id}{suffix}"
            if p.exists():
                return p
        return None

    def has_mask(self, sample_id: str) -> bool:
        return self.mask_path(sample_id) is not None

    # -- reading --------------------------------------------------------------------------
    def read_image(self, sample_id: str) -> np.ndarray:
        """float32 (C, H, W) in physical units."""
        files = self._files.get(sample_id) or self._image_files(sample_id)
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
        return arr.astype(np.float32, copy=False)

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
            lut_keys[self.spec.ignore_index] = IGNORE
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
        """From dataset.yaml if declared, else robust percentiles of the train split (or all)."""
        if self.spec.normalization is not None:
            return ChannelNormalizer(self.spec.normalization.low, self.spec.normalization.high)
        ids = self.spec.splits.get("train") or self._ids
        return ChannelNormalizer.fit(self.read_image(i) for i in ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.root}, {len(self)} samples, channels={self.spec.channel_names}, "
            f"classes={[c.name for c in self.spec.classes]})"
        )


def _discover_ids(folder: Path, spec: DatasetSpec) -> set[str]:
    if not folder.is_dir():
        raise PairforgeError(
            f"{folder}: folder not found; images go in {IMAGE_DIR}/ next to {SPEC_FILE}"
        )
    ids = set()
    names = spec.channel_names
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        stem = p.stem
        for ch in names:
            if len(names) > 1 and stem.endswith(f"_{ch}"):
                stem = stem[: -len(ch) - 1]
                break
        ids.add(stem)
    if not ids:
        raise PairforgeError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return ids


def load_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder: validates dataset.yaml and that every sample has its image files.

    Pixel-level checks (corrupt files, channel counts, unknown class ids, sizes) happen when a
    sample is read; `pairforge data check` reads everything.
    """
    root = Path(path)
    if not root.exists():
        raise PairforgeError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise PairforgeError(f"{root}: is a file; pass the dataset folder that holds {SPEC_FILE}")
    return Dataset(root, read_spec(root))


class DatasetWriter:
    """Writes samples in the standard format; dataset.yaml is rewritten atomically as it goes.

    Resumable: opening an existing folder keeps the samples its dataset.yaml lists, and
    `has(id)` tells which are done. Images are float32 TIFF (C, H, W), masks PNG of class ids
    (16-bit TIFF when an id exceeds 255).
    """

    def __init__(self, path: str | Path, spec: DatasetSpec, flush_every: int = 32):
        self.root = Path(path)
        (self.root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / MASK_DIR).mkdir(parents=True, exist_ok=True)
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

        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[0] != self.spec.num_channels:
            raise PairforgeError(
                f"sample {sample_id!r}: image shape {image.shape} does not match "
                f"{self.spec.num_channels} channels (C, H, W)"
            )
        img_path = self.root / IMAGE_DIR / f"{sample_id}.tif"
        _atomic_write(
            img_path,
            lambda p: tifffile.imwrite(p, image, photometric="minisblack", compression="zlib"),
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
        if self._pending >= self.flush_every:
            self.flush()

    def _write_mask(self, sample_id: str, mask: np.ndarray) -> None:
        indices = mask.astype(np.int64)
        k = self.spec.num_classes
        bad = np.unique(indices[(indices < 0) | ((indices >= k) & (indices != IGNORE))])
        if bad.size:
            raise PairforgeError(
                f"sample {sample_id!r}: mask has class indices {bad.tolist()} outside 0..{k - 1}"
            )
        lut = self._index_to_id.copy()
        ids = np.where(indices == IGNORE, -1, lut[np.clip(indices, 0, k)])
        if (ids == -1).any():
            if self.spec.ignore_index is None:
                self.spec.ignore_index = 255 if 255 not in lut[:k] else 65535
            ids = np.where(ids == -1, self.spec.ignore_index, ids)
        if ids.max(initial=0) < 256:
            from PIL import Image

            path = self.root / MASK_DIR / f"{sample_id}.png"
            _atomic_write(
                path, lambda p: Image.fromarray(ids.astype(np.uint8)).save(p, format="PNG")
            )
        else:
            import tifffile

            path = self.root / MASK_DIR / f"{sample_id}.tif"
            _atomic_write(path, lambda p: tifffile.imwrite(p, ids.astype(np.uint16)))

    def flush(self) -> None:
        """Rewrite dataset.yaml so it lists every sample written so far."""
        text = self.spec.to_yaml()
        _atomic_write(self.root / SPEC_FILE, lambda p: p.write_text(text))
        self._pending = 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
