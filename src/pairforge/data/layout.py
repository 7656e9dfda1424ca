"""The folder layout of a dataset on disk: image and mask folders, file suffixes, sample ids of file names."""

from __future__ import annotations

import os
from pathlib import Path

from pairforge.data.spec import DatasetSpec
from pairforge.errors import PairforgeError

IMAGE_DIR = "images"
MASK_DIR = "masks"
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


def check_link(path: Path) -> None:
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


def check_folder(folder: Path, what: str) -> bool:
    """True if `folder` is a listable folder, False if it does not exist; raise if unreadable.

    A masks/ folder that is a symlink loop or unreadable must not pass as "no masks".
    """
    check_link(folder)
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


def discover_ids(folder: Path, spec: DatasetSpec) -> set[str]:
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
