"""The `dataset.yaml` schema: channels, classes, splits and normalization of a pairforge dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pairforge.errors import PairforgeError

SPEC_FILE = "dataset.yaml"


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


# A fixed, distinguishable palette for classes that declare no color.
DEFAULT_PALETTE = [
    (70, 70, 70), (230, 180, 40), (40, 90, 200), (200, 60, 60), (60, 170, 90), (150, 80, 190),
    (240, 130, 40), (40, 190, 200), (230, 90, 170), (140, 140, 40), (120, 60, 30), (0, 0, 140),
]  # fmt: skip


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
        seen: dict[str, str] = {}
        for split, members in self.splits.items():
            for sample_id in members:
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


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: message (got value)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        got = f" (got {e['input']!r})" if "input" in e and e["type"] != "extra_forbidden" else ""
        lines.append(f"{source}: {loc}: {msg}{got}")
    return "\n".join(lines)


def read_spec(path: str | Path) -> DatasetSpec:
    """Read and validate `dataset.yaml` (a directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if not path.exists():
        raise PairforgeError(
            f"{path}: not found. A pairforge dataset is a folder with dataset.yaml, images/ and "
            "masks/; create one with `pairforge data import` or `pairforge data grains`."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PairforgeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise PairforgeError(f"{path}: expected a mapping of keys (channels, classes, ...)")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as err:
        raise PairforgeError(format_validation_error(err, str(path))) from err
