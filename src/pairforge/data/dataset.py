"""The standard pairforge dataset on disk: read it (`load_dataset`) and write it (`DatasetWriter`)."""

from __future__ import annotations

import logging
import os
import struct
import warnings
import zlib
from functools import cached_property
from pathlib import Path

import numpy as np

from pairforge.data.codec import IGNORE_INDEX
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import SPEC_FILE, DatasetSpec, check_sample_id, read_spec
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, ensure_writable_dir, write_error

IMAGE_DIR = "images"
MASK_DIR = "masks"
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


CORRUPT_FIX = (
    "the file is truncated or corrupt; re-export it, or remove the sample from dataset.yaml"
)


def read_array(path: Path) -> np.ndarray:
    """Read an image file (TIFF, NPY, PNG, JPEG) as stored, raising PairforgeError if it is corrupt.

    Truncated files are errors, never zero-filled: Pillow runs with LOAD_TRUNCATED_IMAGES off, and
    PNGs are additionally checked for a complete pixel stream (Pillow decodes a PNG whose
    compressed data ends early as black rows, i.e. as class 0 in a mask).
    """
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            # tifffile logs what it could not parse; the PairforgeError below says it once.
            log = logging.getLogger("tifffile")
            level = log.level
            log.setLevel(logging.CRITICAL)
            try:
                return tifffile.imread(path)
            finally:
                log.setLevel(level)
        from PIL import Image, ImageFile

        if path.suffix.lower() == ".png":
            _check_png_complete(path)
        strict = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # another library may have switched it on
        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGB")
                return np.asarray(im)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = strict
    except PairforgeError:
        raise
    except Exception as err:  # any decoder failure means a corrupt, truncated or foreign file
        raise PairforgeError(
            f"{path}: cannot be read ({type(err).__name__}: {err}); {CORRUPT_FIX}"
        ) from err


# PNG color type -> samples per pixel; Adam7 passes as (x0, y0, dx, dy).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip


def _png_raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes of the decompressed PNG pixel stream: one filter byte plus the pixels per row."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * bits_per_pixel) // 8))
    return total


def _check_png_complete(path: Path) -> None:
    """Raise PairforgeError if a PNG's chunks are cut off or its pixel data covers fewer rows."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return  # not a PNG after all: let Pillow say what it is
    pos, header, inflater, raw_bytes, ended = 8, None, zlib.decompressobj(), 0, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            break
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise PairforgeError(
                f"{path}: PNG chunk {kind.decode('latin-1')!r} at byte {pos} fails its checksum; "
                f"{CORRUPT_FIX}"
            )
        if kind == b"IHDR" and length >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            raw_bytes += len(inflater.decompress(body))
        elif kind == b"IEND":
            ended = True
            break
        pos += 12 + length
    if header is None:
        return  # no header: Pillow reports the file as unreadable
    width, height, bit_depth, color_type, _, _, interlace = header
    bits = bit_depth * _PNG_SAMPLES.get(color_type, 1)
    expected = _png_raw_size(width, height, bits, interlace == 1)
    if not ended or raw_bytes < expected:
        rows = min(height, raw_bytes * height // expected) if expected else 0
        raise PairforgeError(
            f"{path}: its pixel data covers about {rows} of {height} rows"
            f"{'' if ended else ' and the end marker is missing'}; {CORRUPT_FIX}"
        )


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


def _atomic_write(path: Path, write, what: str) -> None:
    """Write via a hidden temporary file in the same folder, then rename: no half-written files.

    OSErrors (disk full, read-only file system) become PairforgeErrors naming `path` and the fix.
    """
    try:
        atomic_write(path, write)
    except OSError as err:
        raise write_error(path, what, err) from None


def _check_link(path: Path) -> None:
    """Raise if `path` is a symbolic link that leads nowhere (dangling or pointing at itself).

    `Path.exists()` is False for such a link, which would otherwise read as "no such file".
    """
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise PairforgeError(
            f"{path}: is a broken or self-referencing symbolic link (points to {target!r}); "
            "replace it with the file itself or a link to an existing file"
        )


def _check_folder(folder: Path, what: str) -> bool:
    """True if `folder` is a listable folder, False if it does not exist; raise if unreadable.

    A masks/ folder that is a symlink loop or unreadable must not pass as "no masks".
    """
    _check_link(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise PairforgeError(f"{folder}: is a file, expected the {what} folder; move it away")
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as err:
        raise PairforgeError(
            f"{folder}: the {what} folder cannot be read ({err.strerror or err}); fix its "
            "permissions or the link"
        ) from None
    return True


def sample_id_of(file_name: str, channel_names: list[str]) -> str:
    """The sample id of an image file name: its stem without a `_<channel>` suffix."""
    stem = Path(file_name).stem
    for ch in channel_names:
        if stem.endswith(f"_{ch}") and len(stem) > len(ch) + 1:
            return stem[: -len(ch) - 1]
    return stem


def unlisted_image_files(root: Path, spec: DatasetSpec) -> list[str]:
    """Names of image files in root/images that belong to no split ([] if no splits are declared).

    Hidden files (temporary files of interrupted writes) are not samples and are not listed.
    """
    if not spec.splits or not (root / IMAGE_DIR).is_dir():
        return []
    listed = {i for members in spec.splits.values() for i in members}
    unlisted = []
    for p in sorted((root / IMAGE_DIR).iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem not in listed and sample_id_of(p.name, spec.channel_names) not in listed:
                unlisted.append(p.name)
    return unlisted


class Dataset:
    """A loaded dataset: spec plus lazily read images (physical units) and masks (class indices)."""

    def __init__(self, root: Path, spec: DatasetSpec):
        self.root = root
        self.spec = spec
        # No masks/ means unlabeled, and without images/ each listed sample reports its missing
        # image below; but a looping link or an unreadable folder must not pass as empty.
        has_images = _check_folder(root / IMAGE_DIR, "images")
        _check_folder(root / MASK_DIR, "masks")
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
            self._ids = sorted(_discover_ids(root / IMAGE_DIR, spec))
        # class id -> class index; everything else is unknown (ignore_index -> IGNORE_INDEX).
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
            _check_link(p)
            if p.exists():
                return [p]
        per_channel = []
        for ch in self.spec.channel_names:
            found = [folder / f"{sample_id}_{ch}{s}" for s in IMAGE_SUFFIXES]
            for p in found:
                _check_link(p)
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
            _check_link(p)
            if p.exists():
                return p
        return None

    def has_mask(self, sample_id: str) -> bool:
        return self.mask_path(sample_id) is not None

    # -- reading --------------------------------------------------------------------------
    def read_image(self, sample_id: str) -> np.ndarray:
        """float32 (C, H, W) in physical units, all finite (NaN/inf raise PairforgeError)."""
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
        arr = arr.astype(np.float32, copy=False)
        self._check_finite(arr, files)
        return arr

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


def _discover_ids(folder: Path, spec: DatasetSpec) -> set[str]:
    """Sample ids of the image files in `folder` (a dataset without splits)."""
    ids = set()
    names = spec.channel_names
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        ids.add(sample_id_of(p.name, names) if len(names) > 1 else p.stem)
    if not ids:
        raise PairforgeError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return ids


def load_dataset(path: str | Path) -> Dataset:
    """Open a dataset folder: validates dataset.yaml and that every sample has its image files.

    Pixel-level checks (corrupt files, channel counts, unknown class ids, sizes) happen when a
    sample is read; `pairforge data check` reads everything.
    """
    root = Path(path)
    _check_link(root)
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

    def __init__(self, path: str | Path, spec: DatasetSpec, flush_every: int | None = 32):
        self.root = Path(path)
        # An existing file, a read-only disk or a full one: a PairforgeError naming the folder.
        ensure_writable_dir(self.root, "dataset folder")
        for folder in (IMAGE_DIR, MASK_DIR):
            _check_link(self.root / folder)
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
