"""Run directories: slim inference weights in RUN/model/ and `load_run` to read them back."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pairforge.errors import PairforgeError

MODEL_DIR = "model"
INFO_FILE = "pairforge.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
INFO_FORMAT_VERSION = 1


def write_inference_model(
    run_dir: Path, model: torch.nn.Module, scheduler_config: dict[str, Any], info: dict[str, Any]
) -> Path:
    """Replace RUN/model/ with `model` (save_pretrained: safetensors + config.json),
    scheduler_config.json and pairforge.json (`info`), via a temporary folder and renames."""
    from diffusers import DDPMScheduler

    run_dir = Path(run_dir)
    final, tmp, old = run_dir / MODEL_DIR, run_dir / ".model-tmp", run_dir / ".model-old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    DDPMScheduler.from_config(scheduler_config).save_config(tmp)
    (tmp / INFO_FILE).write_text(
        json.dumps({"format_version": INFO_FORMAT_VERSION, **info}, indent=2)
    )
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class LoadedRun:
    """A trained run, ready for sampling / feature extraction.

    model:            the denoiser in eval mode with EMA weights (UNet2DModel / SemanticUNet /
                      SuperResUNet per task), on the requested device.
    scheduler_config: the training DDPMScheduler config (dict) for `diffusion.sampling.sample`.
    task:             "image" | "joint" | "mask" | "sdm" | "sr".
    normalizer:       ChannelNormalizer, physical units <-> [-1, 1].
    codec:            MaskCodec of the mask channels, or None when the data has no classes.
    spec:             DatasetSpec of the training data (channels, classes, colors).
    resolution:       model side in px; crop_size: source crop side in px.
    config:           the resolved TrainConfig.
    info:             the raw pairforge.json (also: image_channels, sample_channels, step, sr, sdm).
    """

    path: Path
    model: torch.nn.Module
    scheduler_config: dict[str, Any]
    task: str
    normalizer: Any
    codec: Any
    spec: Any
    resolution: int
    crop_size: int
    config: Any
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self):
        """TaskLayout: how x0's channels split into image and mask codes."""
        from pairforge.train.tasks import TaskLayout

        return TaskLayout(
            self.task, self.info["image_channels"], self.codec, self.info["num_classes"]
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model sample x0."""
        return (self.info["sample_channels"], self.resolution, self.resolution)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Read RUN/model/ (written by training) into a LoadedRun; PairforgeError if incomplete."""
    from pairforge.config import validate_config
    from pairforge.data.codec import MaskCodec
    from pairforge.data.normalize import ChannelNormalizer
    from pairforge.data.spec import DatasetSpec
    from pairforge.models.factory import load_model_class, load_pretrained

    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_DIR
    info_path = model_dir / INFO_FILE
    if not info_path.is_file():
        raise PairforgeError(
            f"{run_dir}: no {MODEL_DIR}/{INFO_FILE}; this is not a finished pairforge run "
            "(train one with `pairforge train CONFIG --out RUN`, or wait for its first checkpoint)."
        )
    info = json.loads(info_path.read_text())
    import yaml

    config_path = run_dir / CONFIG_FILE
    config = (
        validate_config(yaml.safe_load(config_path.read_text()), str(config_path))
        if config_path.is_file()
        else None
    )
    model_class = load_model_class(info["model_class"])
    model = load_pretrained(model_class, model_dir).to(device).eval()
    scheduler_config = json.loads((model_dir / "scheduler_config.json").read_text())
    return LoadedRun(
        path=run_dir,
        model=model,
        scheduler_config=scheduler_config,
        task=info["task"],
        normalizer=ChannelNormalizer.from_dict(info["normalizer"]),
        codec=MaskCodec.from_dict(info["codec"]) if info.get("codec") else None,
        spec=DatasetSpec.model_validate(info["spec"]),
        resolution=int(info["resolution"]),
        crop_size=int(info["crop_size"]),
        config=config,
        info=info,
    )
