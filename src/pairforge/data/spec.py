"""The `dataset.yaml` schema: channels, classes, splits and normalization of a pairforge dataset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pairforge.errors import PairforgeError, format_validation_error
from pairforge.viz import DEFAULT_PALETTE  # for classes that declare no color

SPEC_FILE = "dataset.yaml"

SAMPLE_ID_RULE = (
    "a sample id is a plain file-name stem: no '/' or '\\', not '.' or '..', no leading dot, "
    "no NUL, not empty"
)


def sample_id_problem(sample_id: object) -> str | None:
    """Why `sample_id` is not a plain name (None if it is one).

    Ids become file names under images/ and masks/, so a path separator, `..` or an absolute path
    would make pairforge read or write outside the dataset; a leading dot would hide the file.
    """
    if not isinstance(sample_id, str) or not sample_id:
        return "it is empty or not a string"
    if "/" in sample_id or "\\" in sample_id:
        return "it contains a path separator"
    if sample_id in (".", ".."):
        return "it is a relative path"
    if sample_id.startswith("."):
        return "it starts with a dot"
    if "\0" in sample_id:
        return "it contains a NUL character"
    return None


def check_sample_id(sample_id: object, where: str) -> str:
    """Return `sample_id` if it is a plain name, else raise PairforgeError naming it and the rule."""
    problem = sample_id_problem(sample_id)
    if problem:
        raise PairforgeError(
            f"{where}: sample id {sample_id!r} is not allowed ({problem}); {SAMPLE_ID_RULE}. "
            "Rename the sample and its files"
        )
    return sample_id


class ChannelSpec(BaseModel):
    """One image channel: its name and physical unit (e.g. depth in um)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    unit: str = ""


class ClassSpec(BaseModel):
    """One mask class: the id stored in mask files, a name and a display color (RGB 0-255)."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0, le=65535)
    name: str
    color: tuple[int, int, int] | None = None

    @field_validator("color")
    @classmethod
    def _color_in_range(cls, value):
        if value is not None and any(not 0 <= c <= 255 for c in value):
            raise ValueError(f"color {list(value)} has a component outside 0..255")
        return value


class NormalizationSpec(BaseModel):
    """Per-channel physical values mapped to -1 (low) and +1 (high)."""

    model_config = ConfigDict(extra="forbid")
    low: list[float]
    high: list[float]


class DatasetSpec(BaseModel):
    """Contents of `dataset.yaml`. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    name: str = "dataset"
    channels: list[ChannelSpec] = Field(min_length=1)
    classes: list[ClassSpec] = Field(default_factory=list)
    mask_encoding: Literal["ids", "color"] = "ids"
    ignore_index: int | None = None
    splits: dict[str, list[str]] = Field(default_factory=dict)
    normalization: NormalizationSpec | None = None

    @model_validator(mode="after")
    def _consistent(self):
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class ids must be unique, got {ids}")
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique, got {names}")
        if self.mask_encoding == "color":
            missing = [c.name for c in self.classes if c.color is None]
            if missing:
                raise ValueError(f"mask_encoding is 'color' but classes {missing} declare no color")
            colors = [c.color for c in self.classes]
            if len(set(colors)) != len(colors):
                raise ValueError("mask_encoding is 'color' but two classes share a color")
        if self.ignore_index is not None and self.ignore_index in ids:
            raise ValueError(f"ignore_index {self.ignore_index} is also a class id")
        if self.normalization is not None:
            n = len(self.channels)
            if len(self.normalization.low) != n or len(self.normalization.high) != n:
                raise ValueError(f"normalization low/high need {n} values, one per channel")
            for name, low, high in zip(names, self.normalization.low, self.normalization.high):
                # `not high > low` also catches NaN, which compares false with everything.
                if not (math.isfinite(low) and math.isfinite(high) and high > low):
                    raise ValueError(
                        f"normalization of channel {name!r}: low {low} and high {high} must be "
                        "finite with high > low; fix the values, or delete the normalization "
                        "entry to fit it on the train split"
                    )
        seen: dict[str, str] = {}
        for split, members in self.splits.items():
            for sample_id in members:
                problem = sample_id_problem(sample_id)
                if problem:
                    raise ValueError(
                        f"split {split!r}: sample id {sample_id!r} is not allowed ({problem}); "
                        f"{SAMPLE_ID_RULE}"
                    )
                if sample_id in seen and seen[sample_id] != split:
                    raise ValueError(
                        f"sample {sample_id!r} is in splits {seen[sample_id]!r} and {split!r}"
                    )
                seen[sample_id] = split
        return self

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        """Display color per class index (declared, else from a fixed palette)."""
        return [
            c.color or DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i, c in enumerate(self.classes)
        ]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def read_spec(path: str | Path) -> DatasetSpec:
    """Read and validate `dataset.yaml` (a directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if path.is_symlink() and not path.exists():
        raise PairforgeError(
            f"{path}: is a broken or self-referencing symbolic link; replace it with the file"
        )
    if not path.exists():
        raise PairforgeError(
            f"{path}: not found. A pairforge dataset is a folder with dataset.yaml, images/ and "
            "masks/; create one with `pairforge data import` or `pairforge data grains`."
        )
    if path.is_dir():
        raise PairforgeError(
            f"{path}: is a folder, expected the YAML file that describes the dataset; remove "
            "the folder and write dataset.yaml (see `pairforge data import`)"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PairforgeError(
            f"{path}: is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}); save it as UTF-8 YAML"
        ) from None
    except OSError as err:
        raise PairforgeError(
            f"{path}: cannot be read ({err.strerror or err}); check the file and its permissions"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PairforgeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise PairforgeError(f"{path}: expected a mapping of keys (channels, classes, ...)")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as err:
        raise PairforgeError(format_validation_error(err, str(path))) from err
