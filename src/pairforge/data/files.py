"""Stored image and mask files as arrays: reading them (truncated or corrupt files refused) and decoding color masks."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError

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
                array = tifffile.imread(path)
            finally:
                log.setLevel(level)
            if array.size == 0:  # a TIFF header without image data reads as an empty array
                raise PairforgeError(f"{path}: holds no pixels; {CORRUPT_FIX}")
            return array
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
