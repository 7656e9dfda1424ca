"""Typed training configuration (pydantic): sections, named YAML presets and `--set` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pairforge.errors import PairforgeError, format_validation_error


class _Section(BaseModel):
    """Unknown keys are errors; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Training data: a dataset folder in the standard format, cut into crops."""

    path: str = Field("data/grains", description="dataset folder (dataset.yaml, images/, masks/)")
    split: str = Field("train", description="split to train on")
    crop_size: int = Field(256, ge=8, description="crop side in source pixels")
    resolution: int = Field(64, ge=8, description="model side in pixels; crops are downsampled")
    augment: bool = Field(True, description="random flips and 90-degree rotations")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    labels: int | str | None = Field(
        None,
        description="label budget of tasks that read masks: the number of labeled tiles of "
        "data.split the run may read masks from, drawn by data.label_seed ('all' = every tile "
        "of the split; a path ending in .json = that budget file, e.g. the budget.json of seg "
        "import-labels; None = every mask of data.split, no budget)",
    )
    label_seed: int = Field(0, ge=0, description="seed of the label budget's tile draw")
    label_tile: int | None = Field(
        None, ge=8, description="label tile side in source px; None = data.crop_size"
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_count_or_all(cls, value: Any) -> int | str | None:
        """One clear message for a bad budget (not one per member of the union)."""
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        if isinstance(value, str) and value.strip().lower().endswith(".json"):
            return value.strip()  # a budget file, read and checked when training starts
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(
            "give a number of labeled tiles >= 1 (e.g. 8), 'all' (every tile of data.split), a "
            "budget file (.json) or null (every mask of data.split, no budget)"
        )

    @model_validator(mode="after")
    def _label_tile_fits_crops(self) -> DataConfig:
        # Training crops lie inside the labeled tiles, so a tile must hold a whole crop.
        if self.label_tile is not None and self.label_tile < self.crop_size:
            raise ValueError(
                f"data.label_tile {self.label_tile} is smaller than data.crop_size "
                f"{self.crop_size}; training crops lie inside the labeled tiles, so use "
                f"data.label_tile >= {self.crop_size} (or leave it unset: the crop size)"
            )
        return self

    @property
    def label_tile_size(self) -> int:
        """Side of the label tiles in source px: label_tile, else crop_size."""
        return self.label_tile if self.label_tile is not None else self.crop_size


class ModelConfig(_Section):
    """U-Net preset and optional per-field overrides (None keeps the preset's value)."""

    preset: Literal["tiny", "small", "base"] = "small"
    block_out_channels: list[int] | None = None
    layers_per_block: int | None = Field(None, ge=1)
    attention_levels: list[bool] | None = None
    norm_num_groups: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    fraction_conditioning: bool = Field(
        False,
        description="mask / joint tasks: condition the U-Net on each crop's class fractions "
        "(models.fractions; classifier-free guidance with `generate --fractions`)",
    )
    fraction_drop_prob: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="training probability of dropping the fraction condition (the null "
        "condition samples unconditionally; 0 = never trained, unconditional sampling refused)",
    )
    fraction_guidance: float = Field(
        2.0, ge=0.0, description="default `generate --guidance-fractions` scale of the run"
    )

    def overrides(self) -> dict[str, Any]:
        """The fields set here, as keyword overrides for `models.factory.build_model`
        (fraction conditioning as {"fraction_conditioning": {"drop_prob": p}} when on)."""
        fraction_keys = {"preset", *FRACTION_KEYS}
        chosen = {k: v for k, v in self.model_dump(exclude=fraction_keys).items() if v is not None}
        if self.fraction_conditioning:
            chosen["fraction_conditioning"] = {"drop_prob": self.fraction_drop_prob}
        return chosen


FRACTION_KEYS = ("fraction_conditioning", "fraction_drop_prob", "fraction_guidance")


class DiffusionConfig(_Section):
    """Noise schedule and training objective."""

    prediction: Literal["eps", "v"] = "eps"
    schedule: Literal["linear", "cosine"] = "cosine"
    num_train_timesteps: int = Field(1000, ge=10)
    min_snr_gamma: float | None = Field(5.0, gt=0, description="None = plain MSE")


class OptimConfig(_Section):
    """AdamW with linear warm-up, gradient clipping and accumulation."""

    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(500, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; None = off")
    batch_size: int = Field(16, ge=1, description="per process and micro-step")
    grad_accumulation: int = Field(1, ge=1)
    max_steps: int = Field(20000, ge=1, description="optimizer steps")
    max_minutes: float | None = Field(
        None, gt=0, description="stop (and save) once the run's total training time reaches this"
    )


class EMAConfig(_Section):
    """Exponential moving average of the weights, with warm-up:
    decay_k = min(decay, 1 - (1 + k / inv_gamma) ** -power) at optimizer step k."""

    enabled: bool = True
    decay: float = Field(0.9999, ge=0, lt=1)
    power: float = Field(2 / 3, gt=0)
    inv_gamma: float = Field(1.0, gt=0)


class LogConfig(_Section):
    """Logging, sample-grid and checkpoint intervals (in optimizer steps; 0 = never)."""

    every: int = Field(10, ge=1)
    sample_every: int = Field(1000, ge=0)
    checkpoint_every: int = Field(1000, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    num_samples: int = Field(8, ge=1)
    sampler: Literal["dpm++", "ddim", "ddpm"] = "dpm++"
    sample_steps: int = Field(25, ge=1)
    tensorboard: bool = Field(True, description="also log to TensorBoard when it is installed")
    progress: bool = True


class SDMConfig(_Section):
    """Mask-conditioned (two-stage) model: classifier-free guidance training and sampling."""

    cond_drop_prob: float = Field(0.2, ge=0, le=1)
    guidance_scale: float = Field(1.5, ge=0)


class SRConfig(_Section):
    """Super-resolution model: low-res = resolution / scale_factor, noise-augmented."""

    scale_factor: int = Field(4, ge=2)
    noise_aug_max: float = Field(0.3, ge=0, le=1, description="training level ~ U[0, max]")
    sample_noise_level: float = Field(0.2, ge=0, le=1)


class TrainConfig(_Section):
    """Everything a training run needs; saved resolved as RUN/config.yaml."""

    task: Literal["image", "joint", "mask", "sdm", "sr"] = "image"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    optim: OptimConfig = OptimConfig()
    ema: EMAConfig = EMAConfig()
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32",
        description="auto = bf16 where the device has native bf16 (AMX CPUs, GPUs), else fp32",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="NHWC convolutions; auto = measured on this machine before the first step "
        "(both layouts timed on a real batch, cached per machine), true / false to force",
    )
    compile: bool = Field(
        False,
        description="torch.compile the U-Net; its artifacts are cached per machine "
        "(PAIRFORGE_CACHE_DIR), so only the first run pays the minutes of compilation on a CPU",
    )
    mask_codec: Literal["auto", "onehot", "bits"] = "auto"
    seed: int = Field(0, ge=0)
    log: LogConfig = LogConfig()
    sdm: SDMConfig = SDMConfig()
    sr: SRConfig = SRConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.data.crop_size < self.data.resolution:
            raise ValueError(
                f"data.crop_size {self.data.crop_size} is smaller than data.resolution "
                f"{self.data.resolution}; crops are downsampled, so crop_size >= resolution"
            )
        from pairforge.core.tasks import get_task

        get_task(self.task).check_config(self)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def preset_dir() -> Path:
    """Folder of the named presets shipped with pairforge (src/pairforge/configs)."""
    return Path(__file__).resolve().parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if not path.is_file():
        named = preset_dir() / f"{name_or_path}.yaml"
        if not named.is_file():
            raise PairforgeError(
                f"config {str(name_or_path)!r}: no such file and no preset of that name; use a "
                f"YAML path or one of the presets {', '.join(preset_names())}."
            )
        path = named
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PairforgeError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PairforgeError(f"{path}: expected a mapping of sections (task, data, model, ...).")
    return raw, str(path)


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` assignment to the raw config dict in place.

    The value is parsed as YAML (`1e-4`, `true`, `null`, `[32, 64]`); the key path must name a
    TrainConfig field (checked here so the error names the key and lists the valid ones).
    """
    if "=" not in assignment:
        raise PairforgeError(f"--set {assignment!r}: expected key=value, e.g. --set optim.lr=1e-4.")
    key, text = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    model: type[BaseModel] = TrainConfig
    node = raw
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise PairforgeError(
                f"--set {assignment!r}: unknown key {key!r}; {where} has keys "
                f"{', '.join(_field_names(model))}."
            )
        annotation = model.model_fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth == len(parts) - 1:
            if is_section:
                raise PairforgeError(
                    f"--set {assignment!r}: {key!r} is a section; set one of its keys, e.g. "
                    f"{key}.{_field_names(annotation)[0]}=..."
                )
            try:
                node[part] = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                node[part] = text
            return
        if not is_section:
            raise PairforgeError(
                f"--set {assignment!r}: {'.'.join(parts[: depth + 1])!r} is a value, not a section."
            )
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node, model = child, annotation


def validate_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from a raw dict; PairforgeError naming every bad key and value."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise PairforgeError(format_validation_error(err, source)) from None


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a preset (by name, e.g. "demo-image") or YAML file, apply `--set` overrides, validate."""
    raw, source = _read_yaml(name_or_path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    if overrides:
        source = f"{source} (with --set {' '.join(overrides)})"
    return validate_config(raw, source)
