"""Importers from layouts users already have into the standard pairforge dataset format."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from pairforge.data.files import decode_color_mask, read_array
from pairforge.data.spec import ChannelSpec, ClassSpec, DatasetSpec
from pairforge.data.writer import DatasetWriter
from pairforge.errors import PairforgeError

GRAIN_CHANNELS = [
    ChannelSpec(name="intensity", unit="a.u."),
    ChannelSpec(name="depth", unit="a.u."),
]


def parse_class_map(text: str | None) -> dict[int, str] | None:
    """Parse "0:binder,255:grain" into {0: "binder", 255: "grain"}."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        value, sep, name = part.partition(":")
        if not sep or not value.strip().lstrip("-").isdigit() or not name.strip():
            raise PairforgeError(
                f"--classes: cannot parse {part!r}; write value:name pairs, e.g. 0:binder,255:grain"
            )
        out[int(value)] = name.strip()
    return out


def _target_classes(values: set[int], class_map: dict[int, str] | None, source: str):
    """Stored target value -> class index, and the class specs, for grain targets."""
    if class_map is None:
        if values <= {0, 255}:
            class_map = {0: "binder", 255: "grain"}
        elif values <= {0, 1}:
            class_map = {0: "binder", 1: "grain"}
        else:
            raise PairforgeError(
                f"{source}: target values {sorted(values)[:12]} are not binary (0/1 or 0/255); "
                "pass --classes value:name,... to name every value"
            )
    unknown = sorted(values - set(class_map))
    if unknown:
        raise PairforgeError(
            f"{source}: target values {unknown[:12]} are not in --classes {class_map}; add them"
        )
    ordered = sorted(class_map)
    classes = [ClassSpec(id=i, name=class_map[v]) for i, v in enumerate(ordered)]
    return {v: i for i, v in enumerate(ordered)}, classes


def _find_groups(src: Path, pattern: str, suffixes: Iterable[str]) -> dict[str, dict[str, Path]]:
    """Group files `<prefix><sep?><role><suffix>` by prefix; role in intensity/depth/target."""
    rx = re.compile(rf"^(?P<prefix>.*?)[_\-]?(?P<role>intensity|depth|target){pattern}$")
    groups: dict[str, dict[str, Path]] = {}
    for p in sorted(src.iterdir()):
        if p.suffix.lower() not in suffixes:
            continue
        m = rx.match(p.name)
        if m:
            groups.setdefault(m["prefix"] or "sample", {})[m["role"]] = p
    return groups


def _grain_groups(src: Path, layout: str) -> dict[str, dict[str, Path]]:
    """The grain files of `src` by sample prefix and role; every sample has intensity and depth."""
    if not src.is_dir():
        raise PairforgeError(f"{src}: folder not found")
    if layout == "png":
        groups = _find_groups(src, r"\.png", (".png",))
    elif layout == "txt":
        groups = _find_groups(src, r"\.txt", (".txt",))
    else:
        raise PairforgeError(f"unknown grain layout {layout!r}; use png or txt")
    if not groups:
        raise PairforgeError(
            f"{src}: no grain files found; expected {{i}}_intensity.{layout}, "
            f"{{i}}_depth.{layout} and optionally {{i}}_target.{layout}"
        )
    for prefix, files in groups.items():
        missing = [r for r in ("intensity", "depth") if r not in files]
        if missing:
            raise PairforgeError(
                f"{src}: sample {prefix!r} lacks its {' and '.join(missing)} file "
                f"(found {', '.join(p.name for p in files.values())})"
            )
    return groups


def _read_grain_file(path: Path, layout: str) -> np.ndarray:
    """One (H, W) grain file: a tab-separated matrix (layout "txt") or a grayscale image."""
    if layout == "txt":
        try:
            return np.loadtxt(path, delimiter="\t", dtype=np.float64)
        except ValueError as err:
            raise PairforgeError(
                f"{path}: not a tab-separated number matrix ({err}); export it with tabs "
                "between values and one row per line"
            ) from err
    arr = read_array(path)
    if arr.ndim == 3:  # grayscale stored as RGB(A): all color channels must agree
        if not (arr[..., :3] == arr[..., :1]).all():
            raise PairforgeError(f"{path}: expected a grayscale image, got color")
        arr = arr[..., 0]
    return arr


def _read_targets(groups: dict[str, dict[str, Path]], layout: str) -> dict[str, np.ndarray]:
    """Prefix -> int64 (H, W) stored target values, for the samples that have a target file."""
    targets = {}
    for prefix, files in groups.items():
        if "target" in files:
            t = _read_grain_file(files["target"], layout)
            if np.any(t != np.round(t)):
                raise PairforgeError(f"{files['target']}: target holds non-integer values")
            targets[prefix] = t.astype(np.int64)
    return targets


def _grain_image(files: dict[str, Path], layout: str) -> np.ndarray:
    """float32 (2, H, W) intensity and depth of one sample; the two sizes must agree."""
    intensity = _read_grain_file(files["intensity"], layout)
    depth = _read_grain_file(files["depth"], layout)
    if intensity.shape != depth.shape:
        raise PairforgeError(
            f"{files['depth']}: size {depth.shape} differs from {files['intensity'].name} "
            f"{intensity.shape}"
        )
    return np.stack([intensity, depth]).astype(np.float32)


def import_grains(
    src: str | Path,
    out: str | Path,
    layout: str = "png",
    class_map: dict[int, str] | None = None,
    val: list[str] | None = None,
    test: list[str] | None = None,
) -> Path:
    """Import grain measurements: `{i}_intensity.png/_depth.png/_target.png` (layout "png") or
    tab-separated text matrices `*intensity.txt/*depth.txt/*target.txt` (layout "txt")."""
    src, out = Path(src), Path(out)
    groups = _grain_groups(src, layout)
    targets = _read_targets(groups, layout)
    values = {int(v) for t in targets.values() for v in np.unique(t)}
    lut, classes = _target_classes(values, class_map, str(src)) if targets else ({}, [])
    val, test = set(val or []), set(test or [])
    unknown = (val | test) - set(groups)
    if unknown:
        raise PairforgeError(
            f"--val/--test name samples {sorted(unknown)} not found in {src}; found {sorted(groups)}"
        )
    spec = DatasetSpec(name=src.name, channels=GRAIN_CHANNELS, classes=classes)
    with DatasetWriter(out, spec) as writer:
        for prefix, files in groups.items():
            image = _grain_image(files, layout)
            mask = None
            if prefix in targets:
                t = targets[prefix]
                if t.shape != image.shape[1:]:
                    raise PairforgeError(
                        f"{files['target']}: size {t.shape} differs from its image {image.shape[1:]}"
                    )
                mask = np.vectorize(lut.__getitem__, otypes=[np.int64])(t) if lut else None
            split = "val" if prefix in val else "test" if prefix in test else "train"
            writer.add(prefix, image, mask, split=split)
    return out


def read_palette(path: str | Path) -> list[ClassSpec]:
    """A palette file (YAML or JSON): a list of {id, name, color} or a mapping name: [r, g, b]."""
    path = Path(path)
    if not path.exists():
        raise PairforgeError(f"{path}: palette file not found")
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw, dict):
        raw = [{"id": i, "name": k, "color": v} for i, (k, v) in enumerate(raw.items())]
    if not isinstance(raw, list) or not raw:
        raise PairforgeError(
            f"{path}: expected a list of {{id, name, color}} or a mapping name: [r, g, b]"
        )
    try:
        return [ClassSpec.model_validate(c) for c in raw]
    except Exception as err:
        raise PairforgeError(f"{path}: bad palette entry: {err}") from err


def import_color_masks(
    src: str | Path,
    out: str | Path,
    palette: str | Path,
    val: list[str] | None = None,
    test: list[str] | None = None,
) -> Path:
    """Import RGB images `src/images/<id>.(png|jpg)` with color masks `src/masks/<id>.png`."""
    src, out = Path(src), Path(out)
    image_dir, mask_dir = src / "images", src / "masks"
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise PairforgeError(f"{d}: folder not found; expected {src}/images and {src}/masks")
    classes = read_palette(palette)
    spec = DatasetSpec(
        name=src.name,
        channels=[ChannelSpec(name=c, unit="8-bit") for c in ("red", "green", "blue")],
        classes=classes,
        mask_encoding="color",
    )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise PairforgeError(f"{image_dir}: no .png/.jpg images found")
    val, test = set(val or []), set(test or [])
    with DatasetWriter(out, spec) as writer:
        for path in images:
            rgb = read_array(path)
            if rgb.ndim != 3 or rgb.shape[-1] < 3:
                raise PairforgeError(f"{path}: expected an RGB image, got shape {rgb.shape}")
            image = np.moveaxis(rgb[..., :3], -1, 0).astype(np.float32)
            mask_path = mask_dir / f"{path.stem}.png"
            mask = None
            if mask_path.exists():
                m = read_array(mask_path)
                if m.ndim != 3 or m.shape[:2] != rgb.shape[:2]:
                    raise PairforgeError(
                        f"{mask_path}: shape {m.shape} does not match its image {rgb.shape[:2]} "
                        "as an RGB mask"
                    )
                mask = decode_color_mask(
                    m, spec.class_colors, mask_path, fix=f"add them to the palette {palette}"
                )
            split = "val" if path.stem in val else "test" if path.stem in test else "train"
            writer.add(path.stem, image, mask, split=split)
    return out
