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
from pairforge.io import fault_point, write_error

MODEL_DIR = "model"
MODEL_TMP_DIR = ".model-tmp"
INFO_FILE = "pairforge.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
INFO_FORMAT_VERSION = 1


def write_inference_model(
    run_dir: Path, model: torch.nn.Module, scheduler_config: dict[str, Any], info: dict[str, Any]
) -> Path:
    """Replace RUN/model/ with `model` (save_pretrained: safetensors + config.json),
    scheduler_config.json and pairforge.json (`info`), via a temporary folder and renames.

    A kill leaves RUN/model/ whole (old or new) plus maybe RUN/.model-tmp; the training command
    then rebuilds model/ (see `model_is_current`). A failed write raises PairforgeError.
    """
    from diffusers import DDPMScheduler

    run_dir = Path(run_dir)
    final, tmp, old = run_dir / MODEL_DIR, run_dir / MODEL_TMP_DIR, run_dir / ".model-old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        DDPMScheduler.from_config(scheduler_config).save_config(tmp)
        (tmp / INFO_FILE).write_text(
            json.dumps({"format_version": INFO_FORMAT_VERSION, **info}, indent=2)
        )
        for file in tmp.iterdir():
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
    leftovers = (run_dir / MODEL_TMP_DIR).exists() or (run_dir / ".model-old").exists()
    weights = run_dir / MODEL_DIR / "diffusion_pytorch_model.safetensors"
    if leftovers or not weights.is_file() or model_step(run_dir) != step:
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            f.keys()  # a damaged header or a truncated file fails here
    except Exception:
        return False
    return True


def read_run_config(run_dir: str | Path) -> tuple[dict[str, Any], str] | None:
    """RUN/config.yaml as (dict, text), or None when there is none; PairforgeError when it is
    empty, not YAML or not a mapping (a run started by an older version, killed mid-write)."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    fix = (
        "restore it from the command that started the run, or delete it to resume with the "
        "current command's settings (the checkpoints must come from the same settings)"
    )
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PairforgeError(f"{path}: cannot be read as YAML ({first}); {fix}.") from None
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"holds a {type(data).__name__}, not a mapping"
        raise PairforgeError(f"{path}: {what}; {fix}.")
    return data, text


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
    rebuild = (
        f"rerun the training command with --out {run_dir} (it rebuilds {MODEL_DIR}/ from the "
        "last checkpoint), or retrain"
    )
    if not info_path.is_file():
        if _has_checkpoint(run_dir):
            raise PairforgeError(
                f"{run_dir}: no {MODEL_DIR}/{INFO_FILE} although the run has checkpoints (an "
                f"interrupted write?); {rebuild}."
            )
        raise PairforgeError(
            f"{run_dir}: no {MODEL_DIR}/{INFO_FILE}; this is not a finished pairforge run "
            "(train one with `pairforge train CONFIG --out RUN`, or wait for its first checkpoint)."
        )
    info = _read_json(info_path, rebuild)
    scheduler_config = _read_json(model_dir / "scheduler_config.json", rebuild)
    for key in ("task", "model_class", "normalizer", "spec", "resolution", "crop_size"):
        if key not in info:
            raise PairforgeError(f"{info_path}: has no {key!r}; {rebuild}.")
    _warn_if_stale(run_dir, info)
    read = read_run_config(run_dir)
    config = validate_config(read[0], str(run_dir / CONFIG_FILE)) if read else None
    model_class = load_model_class(info["model_class"])
    weights = model_dir / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise PairforgeError(f"{weights}: missing (pairforge loads safetensors only); {rebuild}.")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            f.keys()  # the header: a truncated or foreign file fails here, with its reason
    except Exception as err:
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise PairforgeError(
            f"{weights}: cannot be loaded as the run's weights ({first}); the file is damaged: "
            f"{rebuild}."
        ) from None
    try:
        # The safetensors file exists (checked above), so diffusers never falls back to a
        # pickled .bin that someone put next to it.
        model = load_pretrained(model_class, model_dir).to(device).eval()
    except Exception as err:  # SafetensorError, OSError, ValueError, size mismatches, ...
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise PairforgeError(
            f"{weights}: cannot be loaded as the run's weights ({first}); the file is damaged: "
            f"{rebuild}."
        ) from None
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


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PairforgeError(f"{path}: cannot be read as JSON ({err}); {fix}.") from None
    if not isinstance(data, dict):
        raise PairforgeError(f"{path}: holds a {type(data).__name__}, not an object; {fix}.")
    return data


def _has_checkpoint(run_dir: Path) -> bool:
    from pairforge.train.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir))


def _warn_if_stale(run_dir: Path, info: dict[str, Any]) -> None:
    """Warn when RUN/model/ lags the newest checkpoint after an interrupted final write."""
    import warnings

    from pairforge.train.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    step = info.get("step")
    if checkpoints and step is not None and checkpoints[-1][0] > int(step):
        if (run_dir / MODEL_TMP_DIR).exists() or (run_dir / ".model-old").exists():
            warnings.warn(
                f"{run_dir / MODEL_DIR}: holds step {step} but the newest checkpoint is step "
                f"{checkpoints[-1][0]} (the model write was interrupted); rerun the training "
                f"command with --out {run_dir} to rebuild it",
                stacklevel=3,
            )
