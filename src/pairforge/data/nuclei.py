"""A real labeled image that a PyPI package ships: the 2-D fluorescence nuclei image of the
`stardist` wheel (`stardist/data/images/img2d.tif`, 512 x 512 px, uint16, with its instance
mask `mask2d.tif`; BSD-3-Clause), as a pairforge dataset for checks beyond the built-in grains.

The files are located with `importlib.util.find_spec` and read with tifffile; stardist itself is
never imported (it needs TensorFlow), so `pip install --no-deps stardist==0.9.2` is enough.
The image is cut into four 256 px quadrants: three train measurements and one test measurement;
instance ids become two classes (background, nucleus). There is no val split: selection happens
inside the label budget.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from pairforge.errors import PairforgeError

PACKAGE = "stardist"
IMAGE_FILE = "data/images/img2d.tif"
MASK_FILE = "data/images/mask2d.tif"
INSTALL = "pip install --no-deps stardist==0.9.2"
QUADRANTS = (("q00", 0, 0, "train"), ("q01", 0, 1, "train"), ("q10", 1, 0, "train"),
             ("q11", 1, 1, "test"))  # fmt: skip


def shipped_files(package_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(image, mask) paths inside the installed stardist package (or `package_dir`)."""
    if package_dir is None:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise PairforgeError(
                f"the {PACKAGE} package is not installed; its wheel ships the nuclei image: "
                f"{INSTALL}"
            )
        package_dir = list(spec.submodule_search_locations)[0]
    image, mask = Path(package_dir) / IMAGE_FILE, Path(package_dir) / MASK_FILE
    for path in (image, mask):
        if not path.is_file():
            raise PairforgeError(
                f"{path}: not found in the {PACKAGE} package; reinstall: {INSTALL}"
            )
    return image, mask


def nuclei_spec(name: str = "stardist-nuclei"):
    from pairforge.data.spec import ChannelSpec, ClassSpec, DatasetSpec

    return DatasetSpec(
        name=name,
        channels=[ChannelSpec(name="fluorescence", unit="a.u.")],
        classes=[
            ClassSpec(id=0, name="background", color=[20, 20, 20]),
            ClassSpec(id=1, name="nucleus", color=[80, 220, 120]),
        ],
        mask_encoding="ids",
    )


def write_nuclei_dataset(out_dir: str | Path, package_dir: str | Path | None = None) -> Path:
    """Write the four quadrants (3 train, 1 test) of the shipped nuclei image; returns the folder."""
    from pairforge.data.files import read_array
    from pairforge.data.writer import DatasetWriter

    image_path, mask_path = shipped_files(package_dir)
    image = np.asarray(read_array(image_path), dtype=np.float32)  # corrupt files: PairforgeError
    instances = np.asarray(read_array(mask_path))
    for path, array in ((image_path, image), (mask_path, instances)):
        if array.shape != (512, 512):  # a damaged file can read as an empty array
            raise PairforgeError(
                f"{path}: expected a 512 x 512 array, got shape {array.shape}; reinstall the "
                f"tested version: {INSTALL}"
            )
    semantic = (instances > 0).astype(np.int64)
    half = image.shape[0] // 2
    with DatasetWriter(out_dir, nuclei_spec()) as writer:
        for sample_id, row, col, split in QUADRANTS:
            if writer.has(sample_id):
                continue
            window = np.s_[row * half : (row + 1) * half, col * half : (col + 1) * half]
            writer.add(sample_id, image[window][None], semantic[window], split=split)
    return Path(out_dir)
