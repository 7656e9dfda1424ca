"""Writing run directories: slim inference weights in RUN/model/ (read back by `core.run.load_run`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pairforge.core.record import INFO_FORMAT_VERSION, RunRecord
from pairforge.core.run import INFO_FILE, MODEL_DIR, MODEL_OLD_DIR, MODEL_TMP_DIR, WEIGHTS_FILE
from pairforge.io import fault_point, write_error


def write_inference_model(
    run_dir: Path,
    model: torch.nn.Module,
    scheduler_config: dict[str, Any],
    info: RunRecord | dict[str, Any],
) -> Path:
    """Replace RUN/model/ with `model` (save_pretrained: safetensors + config.json),
    scheduler_config.json and pairforge.json (`info`: a RunRecord, or its dict), via a
    temporary folder and renames. Unconditional UNet2DModel runs (image / joint / mask) also get
    the diffusers pipeline files (train.pipeline_export: model_index.json, unet/, scheduler/);
    pairforge.json's "diffusers_pipeline" says whether they were written, or why not.

    A kill leaves RUN/model/ whole (old or new) plus maybe RUN/.model-tmp; the training command
    then rebuilds model/ (see `model_is_current`). A failed write raises PairforgeError.
    """
    from diffusers import DDPMScheduler

    from pairforge.core.tasks import get_task
    from pairforge.train import pipeline_export

    if isinstance(info, RunRecord):
        info = info.model_dump(mode="json", exclude_unset=True)
    blocker = pipeline_export.pipeline_blocker(get_task(info["task"]), model, scheduler_config)
    info = {**info, pipeline_export.RECORD_KEY: pipeline_export.record_entry(blocker)}
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / MODEL_DIR, run_dir / MODEL_TMP_DIR, run_dir / MODEL_OLD_DIR
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        scheduler = DDPMScheduler.from_config(scheduler_config)
        scheduler.save_config(tmp)
        if blocker is None:
            pipeline_export.write_pipeline_files(tmp, scheduler)
        (tmp / INFO_FILE).write_text(
            json.dumps({"format_version": INFO_FORMAT_VERSION, **info}, indent=2)
        )
        for file in sorted(tmp.rglob("*")):  # unet/ and scheduler/ included
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        fault_point("model")  # tests: die with .model-tmp complete and model/ not yet replaced
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)  # put the previous weights back
        raise write_error(final, "inference model", err) from None
    shutil.rmtree(old, ignore_errors=True)
    return final


def model_step(run_dir: str | Path) -> int | None:
    """The training step recorded in RUN/model/pairforge.json, or None (missing / unreadable)."""
    try:
        info = json.loads((Path(run_dir) / MODEL_DIR / INFO_FILE).read_text())
        return int(info["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_is_current(run_dir: str | Path, step: int) -> bool:
    """True when RUN/model/ holds readable weights of training step `step` and no interrupted
    model write (RUN/.model-tmp, RUN/.model-old) is left over."""
    run_dir = Path(run_dir)
    leftovers = (run_dir / MODEL_TMP_DIR).exists() or (run_dir / MODEL_OLD_DIR).exists()
    weights = run_dir / MODEL_DIR / WEIGHTS_FILE
    if leftovers or not weights.is_file() or model_step(run_dir) != step:
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            f.keys()  # a damaged header or a truncated file fails here
    except Exception:
        return False
    return True
