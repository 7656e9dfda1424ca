"""RUN/model/ as a diffusers pipeline folder too: model_index.json, unet/ and scheduler/.

The pairforge files (config.json, diffusion_pytorch_model.safetensors, scheduler_config.json,
pairforge.json) stay at the top of RUN/model/, so `core.run.load_run` and
`UNet2DModel.from_pretrained(RUN/model)` read it as before; the pipeline's subfolders sit next
to them, so `DDPMPipeline.from_pretrained(RUN/model)` loads the same weights (unet/ holds a hard
link to the top-level weights file, a copy only where the filesystem has no hard links) and the
run's noise schedule. Written inside the temporary model folder that `train.run` swaps in whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

PIPELINE_INDEX = "model_index.json"
UNET_DIR = "unet"
SCHEDULER_DIR = "scheduler"
# pairforge.json key: {"written": true, "pipeline": "DDPMPipeline"} or {"written": false, "reason"}.
RECORD_KEY = "diffusers_pipeline"


def pipeline_blocker(task, model, scheduler_config: dict[str, Any]) -> str | None:
    """Why RUN/model/ cannot be a DDPMPipeline folder, or None when it can.

    task: the run's core.tasks.Task; model: the denoiser being saved; scheduler_config: the
    training DDPMScheduler config. A fraction-conditioned model (models.fractions) qualifies
    through its null condition when training dropped the condition. DDPMPipeline draws (B, in_channels, sample_size, sample_size)
    noise and calls unet(x_t, t).sample with no condition, stepping a DDPMScheduler.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from pairforge.models.fractions import FractionConditionedUNet

    if isinstance(model, FractionConditionedUNet):
        # Its null condition IS the inner UNet2DModel (the embedding adds exactly zero), which
        # the folder holds: DDPMPipeline samples it unconditionally, but only a null condition
        # that training saw (drop_prob > 0) gives real samples.
        if model.drop_prob <= 0:
            return (
                "the run is fraction-conditioned with model.fraction_drop_prob=0: its null "
                "(unconditional) condition was never trained, so DDPMPipeline, which passes no "
                "condition, would sample an untrained model"
            )
        model = model.unet
    if not task.unconditional:
        return (
            f"task {task.name!r} samples from a condition (masks or low-resolution images), "
            "which DDPMPipeline cannot pass to the model"
        )
    if task.model_class != "UNet2DModel" or type(model) is not UNet2DModel:
        return f"the model is a {type(model).__name__}, DDPMPipeline needs a plain UNet2DModel"
    if model.config.in_channels != model.config.out_channels:
        return (
            f"the model maps {model.config.in_channels} to {model.config.out_channels} channels; "
            "DDPMPipeline needs equal input and output channels"
        )
    import inspect

    # from_config keeps unknown keys in .config but ignores them: compare against __init__'s.
    known = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    rebuilt = dict(DDPMScheduler.from_config(scheduler_config).config)
    for key, value in scheduler_config.items():
        if key.startswith("_"):
            continue  # _class_name, _diffusers_version, _use_default_values
        if key not in known or rebuilt[key] != value:
            return (
                f"the noise schedule's {key}={value!r} cannot be expressed in diffusers' "
                "DDPMScheduler"
            )
    return None


def record_entry(blocker: str | None) -> dict[str, Any]:
    """The pairforge.json value of RECORD_KEY for `pipeline_blocker`'s answer."""
    if blocker is None:
        return {"written": True, "pipeline": "DDPMPipeline"}
    return {"written": False, "reason": blocker}


def write_pipeline_files(folder: Path, scheduler) -> None:
    """model_index.json, unet/ and scheduler/ into `folder`, which already holds the model's
    config.json and weights (save_pretrained); scheduler: the DDPMScheduler to save."""
    import diffusers

    from pairforge.core.run import WEIGHTS_FILE

    folder = Path(folder)
    unet = folder / UNET_DIR
    unet.mkdir()
    shutil.copyfile(folder / "config.json", unet / "config.json")
    try:  # one file on disk for both readers: RUN/model/ holds each weight byte once
        os.link(folder / WEIGHTS_FILE, unet / WEIGHTS_FILE)
    except OSError:
        shutil.copyfile(folder / WEIGHTS_FILE, unet / WEIGHTS_FILE)
    scheduler.save_config(folder / SCHEDULER_DIR)
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", type(scheduler).__name__],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (folder / PIPELINE_INDEX).write_text(json.dumps(index, indent=2))
