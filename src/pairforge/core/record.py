"""The run record: what RUN/model/pairforge.json holds, as a typed (pydantic) model.

Written by training (`train.run.write_inference_model`), read by `core.run.load_run`. Older
files lack some derived keys (image_channels, num_classes, sample_channels); they are filled in
from the dataset spec and the task layout when the record is read. Unknown keys are kept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from pairforge.data.spec import DatasetSpec

INFO_FORMAT_VERSION = 1
# Keys without which a record cannot be loaded at all (the error names the first one missing).
REQUIRED_KEYS = ("task", "model_class", "normalizer", "spec", "resolution", "crop_size")


class RunRecord(BaseModel):
    """RUN/model/pairforge.json.

    task:            "image" | "joint" | "mask" | "sdm" | "sr" (see core.tasks).
    model_class:     UNet2DModel | SemanticUNet | SuperResUNet: the class that loads the weights.
    channels:        the dataset's channel names (image part of x0, in order).
    image_channels:  channels of the image part; num_classes: mask classes (0 = none).
    sample_channels: channels of x0 = cat(image, codec(mask)) per task.
    codec / normalizer: MaskCodec.to_dict() (None without classes) / ChannelNormalizer.to_dict().
    spec:            the training data's DatasetSpec.
    resolution / crop_size: model side / source crop side in px.
    prediction:      "epsilon" | "v_prediction"; step: the training step of the weights.
    sdm / sr:        the task's SDMConfig / SRConfig settings (None for other tasks).
    class_fractions: optional class fractions of the training masks.
    label_budget:    LabelBudget.to_dict() of the masks training read (data.labels), None
                     when it read every mask of its split or none; reads_masks: whether
                     training read masks at all (task.needs_masks). Older records lack both
                     (None); `core.run.LoadedRun` then answers from the task.
    """

    model_config = ConfigDict(extra="allow")

    format_version: int = INFO_FORMAT_VERSION
    task: str
    model_class: str
    channels: list[str] | None = None
    image_channels: int | None = None
    num_classes: int | None = None
    sample_channels: int | None = None
    codec: dict[str, Any] | None = None
    normalizer: dict[str, Any]
    spec: DatasetSpec
    resolution: int
    crop_size: int
    prediction: str | None = None
    step: int | None = None
    sdm: dict[str, Any] | None = None
    sr: dict[str, Any] | None = None
    class_fractions: list[float] | None = None
    label_budget: dict[str, Any] | None = None
    reads_masks: bool | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The record as written to pairforge.json."""
        return self.model_dump(mode="json")
