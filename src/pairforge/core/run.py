"""Reading a run directory: the layout of RUN/, `load_run` and the typed `LoadedRun`.

Training (`pairforge.train`) writes run directories; generate, seg and eval read them through
this module only.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pairforge.core.record import REQUIRED_KEYS, RunRecord
from pairforge.core.tasks import Task, TaskLayout, get_task
from pairforge.data.budget import LabelBudget, budget_from_record
from pairforge.data.codec import MaskCodec
from pairforge.data.normalize import ChannelNormalizer
from pairforge.data.spec import DatasetSpec
from pairforge.errors import PairforgeError

if TYPE_CHECKING:
    from pairforge.config import TrainConfig

MODEL_DIR = "model"
MODEL_TMP_DIR = ".model-tmp"
MODEL_OLD_DIR = ".model-old"
INFO_FILE = "pairforge.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, folder), oldest first; the step is read from state.json."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        state_file = folder / STATE_FILE
        if folder.name.startswith(".") or not state_file.is_file():
            continue  # a temporary or interrupted write
        try:
            step = int(json.loads(state_file.read_text())["step"])
        except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError):
            continue
        found.append((step, folder))
    return sorted(found)


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


def read_task_name(run_dir: str | Path) -> str | None:
    """The task recorded in RUN/model/pairforge.json, or None when it cannot be read."""
    try:
        return json.loads((Path(run_dir) / MODEL_DIR / INFO_FILE).read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None  # load_run reports what is wrong with the run


def layout_of(run) -> TaskLayout:
    """The TaskLayout of a loaded run (or any object with .task, .spec and .codec)."""
    num_classes = run.codec.num_classes if run.codec is not None else len(run.spec.classes)
    return TaskLayout(run.task, run.spec.num_channels, run.codec, num_classes)


@dataclass
class LoadedRun:
    """A trained run, ready for sampling / feature extraction.

    model:            the denoiser in eval mode with EMA weights (UNet2DModel / SemanticUNet /
                      SuperResUNet per task), on the requested device.
    scheduler_config: the training DDPMScheduler config (dict) for `diffusion.sampling.sample`.
    record:           the typed pairforge.json (RunRecord).
    task:             "image" | "joint" | "mask" | "sdm" | "sr" (`task_spec`: its Task object).
    normalizer:       physical units <-> [-1, 1].
    codec:            the mask channels' codec, or None when the data has no classes.
    spec:             DatasetSpec of the training data (channels, classes, colors).
    resolution:       model side in px; crop_size: source crop side in px.
    config:           the resolved TrainConfig, None when RUN/config.yaml is missing.
    label_budget / reads_masks: the labels training read (properties, from the record).
    """

    path: Path
    model: torch.nn.Module
    scheduler_config: dict[str, Any]
    record: RunRecord
    normalizer: ChannelNormalizer
    codec: MaskCodec | None
    spec: DatasetSpec
    resolution: int
    crop_size: int
    config: TrainConfig | None

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def task_spec(self) -> Task:
        return get_task(self.record.task)

    @property
    def label_budget(self) -> LabelBudget | None:
        """The label budget training read masks from; None: every mask of its split, or none
        (see `reads_masks`), and for records written before label budgets."""
        return budget_from_record(
            self.record.label_budget, f"{self.path / MODEL_DIR / INFO_FILE} label_budget"
        )

    @property
    def reads_masks(self) -> bool:
        """Whether training read masks: the record's value; older records: the task's."""
        if self.record.reads_masks is not None:
            return self.record.reads_masks
        return self.task_spec.needs_masks

    @property
    def info(self) -> dict[str, Any]:
        """pairforge.json as a plain dict (the record with its derived keys filled in)."""
        return self.record.model_dump(mode="json", exclude_none=True)

    @property
    def layout(self) -> TaskLayout:
        """TaskLayout: how x0's channels split into image and mask codes."""
        return TaskLayout(
            self.task, self.record.image_channels, self.codec, self.record.num_classes
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model sample x0."""
        return (self.record.sample_channels, self.resolution, self.resolution)


def require_task(run, task: str, role: str) -> None:
    """PairforgeError unless the loaded run `run` has task `task`; `role` names it (a flag and
    path, or a pipeline stage)."""
    if run.task != task:
        raise PairforgeError(
            f"{role}: the run has task {run.task!r}, expected {task!r}; "
            f"pass a run trained with task: {task}."
        )


def read_run_record(info: dict[str, Any], info_path: Path, fix: str) -> RunRecord:
    """Validate a pairforge.json dict; derived keys of older files are filled in."""
    for key in REQUIRED_KEYS:
        if key not in info:
            raise PairforgeError(f"{info_path}: has no {key!r}; {fix}.")
    try:
        record = RunRecord.model_validate(info)
        task = get_task(record.task)
    except (ValueError, PairforgeError) as err:
        first = str(err).splitlines()[0][:300]
        raise PairforgeError(f"{info_path}: is not a valid run record ({first}); {fix}.") from None
    if record.image_channels is None:
        record.image_channels = record.spec.num_channels
    if record.num_classes is None:
        record.num_classes = len(record.spec.classes)
    if record.sample_channels is None:
        codec = MaskCodec.from_dict(record.codec) if record.codec else None
        layout = TaskLayout(task.name, record.image_channels, codec, record.num_classes)
        record.sample_channels = layout.sample_channels
    return record


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Read RUN/model/ (written by training) into a LoadedRun; PairforgeError if incomplete."""
    from pairforge.config import validate_config
    from pairforge.models.factory import load_model_class, load_pretrained

    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_DIR
    info_path = model_dir / INFO_FILE
    rebuild = (
        f"rerun the training command with --out {run_dir} (it rebuilds {MODEL_DIR}/ from the "
        "last checkpoint), or retrain"
    )
    if not info_path.is_file():
        if list_checkpoints(run_dir):
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
    record = read_run_record(info, info_path, rebuild)
    _warn_if_stale(run_dir, record)
    read = read_run_config(run_dir)
    config = validate_config(read[0], str(run_dir / CONFIG_FILE)) if read else None
    model_class = load_model_class(record.model_class)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise PairforgeError(f"{weights}: missing (pairforge loads safetensors only); {rebuild}.")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            f.keys()  # the header: a truncated or foreign file fails here, with its reason
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
        record=record,
        normalizer=ChannelNormalizer.from_dict(record.normalizer),
        codec=MaskCodec.from_dict(record.codec) if record.codec else None,
        spec=record.spec,
        resolution=record.resolution,
        crop_size=record.crop_size,
        config=config,
    )


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PairforgeError(f"{path}: cannot be read as JSON ({err}); {fix}.") from None
    if not isinstance(data, dict):
        raise PairforgeError(f"{path}: holds a {type(data).__name__}, not an object; {fix}.")
    return data


def _warn_if_stale(run_dir: Path, record: RunRecord) -> None:
    """Warn when RUN/model/ lags the newest checkpoint after an interrupted final write."""
    checkpoints = list_checkpoints(run_dir)
    step = record.step
    if checkpoints and step is not None and checkpoints[-1][0] > int(step):
        if (run_dir / MODEL_TMP_DIR).exists() or (run_dir / MODEL_OLD_DIR).exists():
            warnings.warn(
                f"{run_dir / MODEL_DIR}: holds step {step} but the newest checkpoint is step "
                f"{checkpoints[-1][0]} (the model write was interrupted); rerun the training "
                f"command with --out {run_dir} to rebuild it",
                stacklevel=3,
            )
