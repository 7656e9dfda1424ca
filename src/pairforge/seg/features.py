"""Per-pixel features from a frozen diffusion U-Net: decoder block outputs at a few noise levels.

Method (Baranchuk et al., ICLR 2022): noise each image once per timestep t with ONE fixed seeded
noise tensor eps, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (the scheduler's `add_noise`),
run the denoiser, keep the outputs of chosen decoder blocks (forward hooks, addressed by module
name such as "up_blocks.1"), upsample each bilinearly to the input size and concatenate along
channels. Feature order: timestep-major, then blocks in the order given. Widths come from the
model config.

Noise levels: timesteps mean different noise on different schedules. The default t = 50, 150,
250 are Baranchuk's timesteps on the linear schedule (abar 0.970 / 0.786 / 0.521); on the cosine
schedule of every pairforge preset the same t are far less noisy (abar 0.992 / 0.940 / 0.846).
`FeatureConfig.noise_levels` states levels independently of the schedule ("abar:0.97,0.79,0.52",
"logsnr:3.5,1.3,0.09" with log-SNR = log(abar / (1 - abar)), or the preset "baranchuk" = the
abar of t = 50 / 150 / 250 on the linear 1e-4..0.02 schedule of T = 1000, computed); they are
resolved to the nearest training timesteps of the model's own scheduler (on cosine, "baranchuk"
gives t = 103 / 300 / 481). The default stays t = 50, 150, 250 because it won the measurement
(bench/bench_features.py; demo grains, an image-only demo-image DDPM (cosine, v) trained 1500
steps, 8 labeled tiles of which 2 steer early stopping, 5 seeds; chosen on the val measurement,
test reported): val mIoU 0.852 / 0.826 / 0.842 and test mIoU 0.855 +- 0.019 / 0.828 +- 0.030 /
0.845 +- 0.020 for t 50,150,250 / "baranchuk" (103,300,481) / logsnr 4.13,2.03,0.89
(72,214,357); paired test differences to the default -2.7 [-4.2, -1.3] and -1.0 [-1.3, -0.8]
mIoU points (95 % t intervals). Less noise is better on this schedule and data.

Joint models (image + mask-codec channels): the mask channels of x0 are unknown at feature time.
`mask_fill="zeros"` sets them to 0, the codec midpoint that favours no class (one-hot
and analog bits both live in {-1, 1}), and noises them like the image channels;
`mask_fill="noise"` replaces them by the pure noise eps itself (as if they were at t = T);
`mask_fill="mean"` (default) sets them to the mean code of the training masks (`mask_mean`, per codec
channel sum_k p_k code_k: 2 p_k - 1 for one-hot), a point on the data manifold's average, and
noises them like the image channels. All-zero one-hot channels are off the data manifold (no
mask encodes to 0), which is why "mean" exists. Measured (bench/bench_features.py, demo-joint trained 1000 steps,
8 labeled tiles, 3 seeds, t 50/150/250, chosen on val): val mIoU mean 0.780 / zeros 0.764 /
noise 0.612, mean above zeros on every seed; on test mean - zeros = +1.1 [-3.9, +6.1] points
(not significant with 3 seeds), noise - zeros = -15.1 [-17.0, -13.2]. Heads saved before
mask_fill existed load as "zeros", the fill they were fitted with.

Memory: pixel features are stored as float16; `extract_pixel_features` can subsample labeled
pixels per image and write to an on-disk numpy memmap, and it estimates the memory need before
allocating anything (`estimate_feature_memory`), stopping with a PairforgeError over budget.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pairforge.core.features import block_features, fixed_noise, pool
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError

DEFAULT_TIMESTEPS = (50, 150, 250)
DEFAULT_MEMORY_BUDGET_BYTES = 8 * 2**30
MASK_FILLS = ("zeros", "noise", "mean")
NOISE_LEVEL_KINDS = ("abar", "logsnr")
# Baranchuk et al.'s timesteps and schedule (guided-diffusion "linear": betas 1e-4..0.02, T=1000).
BARANCHUK_TIMESTEPS = (50, 150, 250)
NOISE_LEVEL_PRESETS = ("baranchuk",)
_FEATURE_BYTES = 2  # float16
_LABEL_BYTES = 8  # int64 class index per stored pixel
_INDEX_BYTES = 2 * 4  # int32 image index + int32 pixel index per stored pixel
# One batch of float32 upsampled features exists twice: the per-block parts and their concat.
_WORKING_BYTES = 2 * 4


@dataclass(frozen=True)
class FeatureConfig:
    """What to extract; saved with a segmentation head so prediction uses the same features.

    timesteps: noise levels t in 0..T-1 of the training schedule (default 50, 150, 250 of 1000,
        Baranchuk's timesteps; the default because it beat the published noise levels on the
        built-in grains, see the module docstring). Ignored when `noise_levels` is given: the extractor overwrites it with the
        resolved timesteps.
    blocks: module names whose outputs are kept ("up_blocks.<i>" or "mid_block"); None = every
        up block of the U-Net.
    noise_seed: seed of the single noise tensor shared by all images and timesteps.
    mask_fill: "zeros" | "noise" | "mean", how x0's mask-codec channels are filled for joint
        models (module docstring).
    noise_levels: schedule-independent levels, "abar:<a1>,<a2>,..." (abar in (0, 1)),
        "logsnr:<l1>,..." (log(abar / (1 - abar)), any real) or a preset name ("baranchuk");
        None = use `timesteps` as given. Resolved per level to the nearest timestep of the
        model's scheduler (nearest in abar for abar levels, in log-SNR for log-SNR levels).
    abar: abar_t of the (resolved) timesteps on the model's schedule, filled by the extractor
        (a record: prediction checks that a head is used on the schedule it was fitted on);
        None = not resolved yet (configs written by hand, heads saved before it existed).
    mask_mean: mask_fill "mean": the fill value of each mask-codec channel (in [-1, 1]), the
        mean code of the training masks; `fit_head` computes it. class_fractions: the class
        fractions p_k it was computed from (a record).
    """

    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    blocks: tuple[str, ...] | None = None
    noise_seed: int = 0
    mask_fill: str = "mean"
    noise_levels: str | None = None
    abar: tuple[float, ...] | None = None
    mask_mean: tuple[float, ...] | None = None
    class_fractions: tuple[float, ...] | None = None

    @property
    def logsnr(self) -> tuple[float, ...] | None:
        """log(abar / (1 - abar)) of each timestep in nats (None until `abar` is known)."""
        if self.abar is None:
            return None
        return tuple(_logsnr(a) for a in self.abar)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; "logsnr" is derived from "abar" (written for readers, not read)."""

        def listed(values):
            return None if values is None else list(values)

        return {
            "timesteps": list(self.timesteps),
            "blocks": listed(self.blocks),
            "noise_seed": self.noise_seed,
            "mask_fill": self.mask_fill,
            "noise_levels": self.noise_levels,
            "abar": listed(self.abar),
            "logsnr": listed(self.logsnr),
            "mask_mean": listed(self.mask_mean),
            "class_fractions": listed(self.class_fractions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Inverse of `to_dict`; keys missing in heads saved by older versions get defaults."""

        def floats(key):
            values = data.get(key)
            return None if values is None else tuple(float(v) for v in values)

        blocks = data.get("blocks")
        return cls(
            timesteps=tuple(int(t) for t in data.get("timesteps", DEFAULT_TIMESTEPS)),
            blocks=None if blocks is None else tuple(blocks),
            noise_seed=int(data.get("noise_seed", 0)),
            mask_fill=str(data.get("mask_fill", "zeros")),
            noise_levels=data.get("noise_levels"),
            abar=floats("abar"),
            mask_mean=floats("mask_mean"),
            class_fractions=floats("class_fractions"),
        )


def _logsnr(abar: float) -> float:
    return math.log(abar) - math.log1p(-abar)


def baranchuk_abar() -> tuple[float, ...]:
    """abar of t = 50, 150, 250 on Baranchuk's linear schedule (betas linspace(1e-4, 0.02, 1000),
    float64 as guided-diffusion computes it): about 0.970, 0.786, 0.521."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    return tuple(float(abar[t]) for t in BARANCHUK_TIMESTEPS)


def parse_noise_levels(text: str) -> tuple[str, tuple[float, ...]]:
    """ "abar:0.97,0.786" / "logsnr:3.5,1.3" / "baranchuk" -> (kind, values).

    Raises PairforgeError naming the bad text and the accepted forms.
    """
    forms = "use abar:0.970,0.786,0.521, logsnr:3.47,1.30,0.09 or a preset (baranchuk)"
    spec = str(text).strip()
    if spec.lower() in NOISE_LEVEL_PRESETS:
        return "abar", baranchuk_abar()
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in NOISE_LEVEL_KINDS:
        raise PairforgeError(f"noise levels {text!r}: unknown form; {forms}")
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", rest.strip()) if v)
    except ValueError as err:
        raise PairforgeError(f"noise levels {text!r}: not a list of numbers; {forms}") from err
    if not values or not all(math.isfinite(v) for v in values):
        raise PairforgeError(f"noise levels {text!r}: need at least one finite number; {forms}")
    if kind == "abar" and not all(0.0 < v < 1.0 for v in values):
        raise PairforgeError(
            f"noise levels {text!r}: abar must lie strictly between 0 and 1 (abar = 1 is no "
            f"noise, 0 pure noise); {forms}"
        )
    return kind, values


def resolve_noise_levels(text: str, alphas_cumprod: Any) -> tuple[int, ...]:
    """Nearest training timesteps of a schedule (abar_t (T,), float) to the levels in `text`.

    abar levels match in abar, log-SNR levels in log-SNR (ties: the smaller t). Two levels that
    land on the same timestep are an error (the schedule is too coarse for them).
    """
    kind, values = parse_noise_levels(text)
    abar = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy())
    if kind == "abar":
        grid, targets = abar, np.asarray(values)
    else:
        clipped = np.clip(abar, 1e-300, 1.0 - 1e-16)
        grid, targets = np.log(clipped) - np.log1p(-clipped), np.asarray(values)
    timesteps = tuple(int(np.abs(grid - target).argmin()) for target in targets)
    if len(set(timesteps)) != len(timesteps):
        raise PairforgeError(
            f"noise levels {text!r} resolve to timesteps {list(timesteps)} on this schedule "
            f"(T = {abar.size}); two levels share a timestep: give levels further apart"
        )
    return timesteps


def resolve_feature_config(
    config: FeatureConfig, scheduler_config: dict[str, Any]
) -> FeatureConfig:
    """`config` with noise_levels resolved to timesteps and `abar` filled for this scheduler."""
    from pairforge.diffusion.schedule import alphas_cumprod

    abar = alphas_cumprod(scheduler_config)
    timesteps = config.timesteps
    if config.noise_levels is not None:
        timesteps = resolve_noise_levels(config.noise_levels, abar)
    num_train = abar.shape[0]
    bad = [t for t in timesteps if not 0 <= t < num_train]
    if bad or not timesteps:
        raise PairforgeError(
            f"feature timesteps {list(timesteps)} must be non-empty and in "
            f"0..{num_train - 1} (the model's training schedule); e.g. 50 150 250"
        )
    return replace(
        config, timesteps=tuple(timesteps), abar=tuple(float(abar[t]) for t in timesteps)
    )


def class_fractions(masks: Any, num_classes: int) -> tuple[float, ...]:
    """Fraction p_k of the labeled pixels of `masks` (long (..., H, W), 255 = ignore) per class."""
    flat = torch.as_tensor(masks).reshape(-1).long()
    flat = flat[flat != IGNORE_INDEX]
    if flat.numel() == 0:
        raise PairforgeError("class fractions of masks without labeled pixels (all 255)")
    counts = torch.bincount(flat.clamp(0, num_classes - 1), minlength=num_classes).double()
    return tuple(float(c) for c in counts / counts.sum())


def mean_mask_code(codec: Any, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """Mean model code of masks with class fractions p: sum_k p_k codec(k), per codec channel.

    One-hot in {-1, 1}: channel k = 2 p_k - 1. Analog bits: channel b = sum_k p_k (+-1 by bit b).
    """
    num_classes = codec.num_classes
    if len(fractions) != num_classes:
        raise PairforgeError(
            f"{len(fractions)} class fractions for a codec of {num_classes} classes"
        )
    codes = codec.encode(torch.arange(num_classes).view(1, 1, num_classes))[0, :, 0]  # (C, K)
    mean = codes.double() @ torch.tensor(fractions, dtype=torch.float64)
    return tuple(float(v) for v in mean)


def block_widths(model_config: Any) -> dict[str, int]:
    """Output channels of every addressable block of a UNet2DModel, from its config.

    up_blocks.<i> outputs reversed(block_out_channels)[i] channels (diffusers builds the decoder
    from the reversed widths); mid_block outputs block_out_channels[-1] when the model has one.
    """
    widths = list(_config_get(model_config, "block_out_channels"))
    names = {f"up_blocks.{i}": width for i, width in enumerate(reversed(widths))}
    if _config_get(model_config, "mid_block_type", "UNetMidBlock2D") is not None:
        names["mid_block"] = widths[-1]
    return names


def _config_get(config: Any, key: str, default: Any = ...) -> Any:
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    if value is ...:
        raise PairforgeError(f"model config has no {key!r}; is this a diffusers UNet2DModel?")
    return value


class DiffusionFeatureExtractor:
    """Frozen UNet2DModel -> per-pixel features (B, feature_dim, H, W) for normalized images.

    Args:
        model: diffusers UNet2DModel (any in_channels); called as model(x_t, t). It is put in
            eval mode, frozen (requires_grad False) and moved to `device` in place.
        scheduler_config: DDPMScheduler config of the model's training (defines abar_t).
        image_channels: channels of the images given to `extract`; the remaining
            in_channels - image_channels model inputs are mask-codec channels (joint models),
            placed after the image channels.
        config: FeatureConfig (timesteps, blocks, noise seed, mask fill).
        device: where the model runs.
        autocast_bf16: run the model under bfloat16 autocast (about 2x faster on CPUs with AMX
            and on GPUs; features differ from float32 by ~1e-2 relative).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheduler_config: dict[str, Any],
        image_channels: int | None = None,
        config: FeatureConfig | None = None,
        device: str | torch.device = "cpu",
        autocast_bf16: bool = False,
    ):
        from diffusers import DDPMScheduler

        # Noise levels -> this schedule's timesteps; abar recorded (validated there).
        self.config = resolve_feature_config(config or FeatureConfig(), scheduler_config)
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.autocast_bf16 = autocast_bf16
        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.in_channels = int(_config_get(model.config, "in_channels"))
        self.image_channels = self.in_channels if image_channels is None else int(image_channels)
        if not 1 <= self.image_channels <= self.in_channels:
            raise PairforgeError(
                f"image_channels={self.image_channels} but the model takes {self.in_channels} "
                f"input channels; use 1..{self.in_channels}"
            )
        if self.config.mask_fill not in MASK_FILLS:
            raise PairforgeError(
                f"mask_fill={self.config.mask_fill!r} is unknown; use one of {', '.join(MASK_FILLS)}"
            )
        mask_channels = self.in_channels - self.image_channels
        if self.config.mask_fill == "mean" and mask_channels:
            mean = self.config.mask_mean
            if mean is None or len(mean) != mask_channels:
                raise PairforgeError(
                    f"mask_fill='mean' needs mask_mean with one value per mask channel "
                    f"({mask_channels}); got {None if mean is None else list(mean)}. fit_head "
                    "computes it from the training masks (class fractions + the run's codec)"
                )
        available = block_widths(model.config)
        self.blocks = tuple(
            self.config.blocks
            if self.config.blocks is not None
            else [n for n in available if n.startswith("up_blocks.")]
        )
        unknown = [name for name in self.blocks if name not in available]
        if unknown or not self.blocks:
            raise PairforgeError(
                f"feature block(s) {unknown or '[]'} not in this model; available: "
                f"{', '.join(available)}"
            )
        self.widths = {name: available[name] for name in self.blocks}
        self.levels = len(_config_get(model.config, "block_out_channels"))
        self._noise_cache: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def feature_dim(self) -> int:
        """D = len(timesteps) * sum(widths of the chosen blocks)."""
        return len(self.config.timesteps) * sum(self.widths.values())

    @property
    def feature_names(self) -> list[str]:
        """One "t<t>/<block>" label per concatenated block output, in feature order."""
        return [f"t{t}/{name}" for t in self.config.timesteps for name in self.blocks]

    def noise(self, height: int, width: int) -> torch.Tensor:
        """The fixed noise eps (in_channels, H, W) for this image size, from `noise_seed`."""
        key = (height, width)
        if key not in self._noise_cache:
            self._noise_cache[key] = fixed_noise(
                self.config.noise_seed, (self.in_channels, height, width)
            )
        return self._noise_cache[key]

    def check_size(self, height: int, width: int) -> None:
        multiple = 2 ** (self.levels - 1)
        if height % multiple or width % multiple:
            raise PairforgeError(
                f"image size {height} x {width} px is not divisible by {multiple} (the U-Net has "
                f"{self.levels} levels); crop or pad to a multiple, or use sliding windows"
            )

    @torch.no_grad()
    def extract(self, images: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Features (B, feature_dim, H, W) of normalized images (B, image_channels, H, W).

        Images are in model units (~[-1, 1], the run's ChannelNormalizer). The result is on the
        CPU in `out_dtype`.
        """
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise PairforgeError(
                f"images must be (B, {self.image_channels}, H, W) normalized; got "
                f"{tuple(images.shape)}"
            )
        batch, _, height, width = images.shape
        self.check_size(height, width)
        x0 = torch.zeros((batch, self.in_channels, height, width))
        x0[:, : self.image_channels] = images
        if self.config.mask_fill == "mean" and self.in_channels > self.image_channels:
            mean = torch.tensor(self.config.mask_mean, dtype=torch.float32)
            x0[:, self.image_channels :] = mean.view(1, -1, 1, 1)
        eps = self.noise(height, width).expand(batch, -1, -1, -1)
        x0, eps = x0.to(self.device), eps.to(self.device)

        parts = []
        for t in self.config.timesteps:
            timesteps = torch.full((batch,), t, dtype=torch.long, device=self.device)
            # Eq. (4) of DDPM: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
            x_t = self.scheduler.add_noise(x0, eps, timesteps)
            if self.config.mask_fill == "noise":
                x_t[:, self.image_channels :] = eps[:, self.image_channels :]
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast_bf16):
                outputs = block_features(self.model, x_t, timesteps, self.blocks)
            for name in self.blocks:
                pooled = pool(outputs[name], "upsample", (height, width))
                parts.append(pooled.to(out_dtype).cpu())
        return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------------
# Loading a feature source: a pairforge run or a diffusers UNet2DModel directory.


@dataclass
class FeatureSource:
    """A frozen denoiser and what is needed to feed it real images.

    model / scheduler_config: the UNet2DModel and its training DDPMScheduler config.
    image_channels: channels of real images (model in_channels minus mask-codec channels).
    normalizer: ChannelNormalizer of a pairforge run, None for a plain diffusers directory
        (then the data set's own normalizer is used).
    path: where it was loaded from (stored in a head's config). task: run task or "image".
    """

    model: torch.nn.Module
    scheduler_config: dict[str, Any]
    image_channels: int
    normalizer: Any = None
    path: str = ""
    task: str = "image"
    extra: dict[str, Any] = field(default_factory=dict)


def load_feature_source(path: str | Path, image_channels: int | None = None) -> FeatureSource:
    """Load RUN (pairforge run directory) or DIR (diffusers UNet2DModel save_pretrained folder).

    A pairforge run is recognised by RUN/model/pairforge.json and loaded with
    `pairforge.core.run.load_run` (EMA weights). A diffusers directory needs config.json +
    weights (also accepted in a `unet/` subfolder); its scheduler is `scheduler_config.json`
    next to it (or in `scheduler/`), else a linear 1000-step DDPMScheduler.
    """
    root = Path(path)
    if not root.exists():
        raise PairforgeError(f"feature source {root} does not exist; pass a run or model folder")
    if (root / "model" / "pairforge.json").exists():
        return _load_pairforge_run(root)
    unet_dir = root / "unet" if (root / "unet" / "config.json").exists() else root
    if not (unet_dir / "config.json").exists():
        raise PairforgeError(
            f"{root} is neither a pairforge run (no model/pairforge.json) nor a diffusers model "
            "folder (no config.json); pass RUN or a UNet2DModel save_pretrained directory"
        )
    from diffusers import DDPMScheduler, UNet2DModel

    from pairforge.models.factory import load_pretrained

    model = load_pretrained(UNet2DModel, unet_dir)
    scheduler_config = None
    for candidate in (
        unet_dir / "scheduler_config.json",
        root / "scheduler_config.json",
        root / "scheduler" / "scheduler_config.json",
    ):
        if candidate.exists():
            scheduler_config = json.loads(candidate.read_text())
            break
    if scheduler_config is None:
        scheduler_config = dict(DDPMScheduler(num_train_timesteps=1000).config)
    return FeatureSource(
        model=model,
        scheduler_config=scheduler_config,
        image_channels=model.config.in_channels if image_channels is None else image_channels,
        path=str(root),
    )


def _load_pairforge_run(root: Path) -> FeatureSource:
    from pairforge.core.run import load_run

    run = load_run(root)
    if not run.task_spec.feature_source:
        raise PairforgeError(
            f"run {root} has task {run.task!r}; features need an unconditional image or joint "
            "DDPM (task image or joint)"
        )
    in_channels = int(run.model.config.in_channels)
    # x0 = cat(image, codec(mask)): image channels come first (core.tasks.TaskLayout).
    image_channels = int(run.record.image_channels or in_channels)
    return FeatureSource(
        model=run.model,
        scheduler_config=dict(run.scheduler_config),
        image_channels=image_channels,
        normalizer=run.normalizer,
        path=str(root),
        task=run.task,
        extra={
            "resolution": run.resolution,
            "crop_size": run.crop_size,
            "spec": run.spec,
            "codec": run.codec,
            # Class fractions of the run's training masks, if the run recorded them.
            "class_fractions": run.record.class_fractions,
        },
    )


# ---------------------------------------------------------------------------------------------
# Pixel feature sets for training a head: memory estimate, subsampling, memmap cache.


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed by `extract_pixel_features`, computed before anything is allocated.

    stored_bytes: the pixel arrays (features float16 (P, D), labels int64 (P,), image index
        and pixel index int32 (P,)); in RAM, or on disk when a cache folder is given.
    working_bytes: one batch of upsampled float32 features (B, D, H, W), held twice (parts and
        their concatenation). Model activations and allocator caching are not included (they
        do not grow with the data set): measured RSS growth for 100 images of 64 px with the
        demo model was 850 MiB against an estimate of 698 MiB (530 MiB stored, exact).
    ram_bytes: what counts against the budget (working, plus stored unless on disk).
    """

    num_pixels: int
    feature_dim: int
    stored_bytes: int
    working_bytes: int
    on_disk: bool

    @property
    def ram_bytes(self) -> int:
        return self.working_bytes + (0 if self.on_disk else self.stored_bytes)


def estimate_feature_memory(
    pixels_per_image: list[int],
    feature_dim: int,
    image_size: tuple[int, int],
    batch_size: int,
    on_disk: bool = False,
) -> MemoryEstimate:
    """Memory of a pixel feature set with `pixels_per_image[i]` stored pixels of image i."""
    num_pixels = int(sum(pixels_per_image))
    per_pixel = feature_dim * _FEATURE_BYTES + _LABEL_BYTES + _INDEX_BYTES
    height, width = image_size
    working = min(batch_size, max(len(pixels_per_image), 1)) * feature_dim * height * width
    return MemoryEstimate(
        num_pixels=num_pixels,
        feature_dim=feature_dim,
        stored_bytes=num_pixels * per_pixel,
        working_bytes=working * _WORKING_BYTES,
        on_disk=on_disk,
    )


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


@dataclass
class PixelFeatures:
    """Features of selected labeled pixels, the training set of a pixel head.

    features: (P, D) float16 (numpy array, or numpy memmap when cached on disk).
    labels: (P,) int64 class indices 0..K-1 (ignore pixels never selected).
    image_index: (P,) int32, which input image each pixel came from (for splits by image).
    pixel_index: (P,) int32, where in that image: flat index y * W + x (None when built by hand
        or read from a cache written before it was recorded).
    """

    features: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    estimate: MemoryEstimate | None = None
    pixel_index: np.ndarray | None = None

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the arrays actually held (or memory-mapped)."""
        arrays = [self.features, self.labels, self.image_index, self.pixel_index]
        return int(sum(a.nbytes for a in arrays if a is not None))

    @property
    def num_images(self) -> int:
        return int(self.image_index.max()) + 1 if self.image_index.size else 0


def extract_pixel_features(
    extractor: DiffusionFeatureExtractor,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    pixels_per_image: int | None = None,
    cache_dir: str | Path | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> PixelFeatures:
    """Features of the labeled pixels of `images`, ready for `train_ensemble`.

    Args:
        images: float (N, C, H, W) normalized; masks: long (N, H, W), 255 = ignore.
        pixels_per_image: keep at most this many labeled pixels per image, drawn uniformly
            without replacement (seeded); None = all labeled pixels.
        cache_dir: write features to cache_dir/features.f16 (numpy memmap) instead of RAM;
            labels, image index and pixel index go to .npy files next to it.
        memory_budget_bytes: raise PairforgeError before allocating if the RAM need is larger.
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    masks = torch.as_tensor(masks, dtype=torch.long)
    if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise PairforgeError(
            f"images {tuple(images.shape)} and masks {tuple(masks.shape)}: need (N, C, H, W) "
            "images and one (H, W) mask per image"
        )
    height, width = images.shape[-2:]
    extractor.check_size(height, width)

    # Choose pixels first: the exact count sizes every allocation and the estimate.
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for mask in masks.numpy():
        labeled = np.flatnonzero(mask.reshape(-1) != IGNORE_INDEX)
        if pixels_per_image is not None and labeled.size > pixels_per_image:
            labeled = np.sort(rng.choice(labeled, size=pixels_per_image, replace=False))
        chosen.append(labeled)
    counts = [len(c) for c in chosen]
    estimate = estimate_feature_memory(
        counts, extractor.feature_dim, (height, width), batch_size, on_disk=cache_dir is not None
    )
    if estimate.ram_bytes > memory_budget_bytes:
        raise PairforgeError(_over_budget_message(estimate, counts, memory_budget_bytes))

    num_pixels, dim = estimate.num_pixels, extractor.feature_dim
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        features = np.lib.format.open_memmap(
            cache / "features.f16.npy", mode="w+", dtype=np.float16, shape=(num_pixels, dim)
        )
    else:
        features = np.empty((num_pixels, dim), dtype=np.float16)
    labels = np.empty(num_pixels, dtype=np.int64)
    image_index = np.empty(num_pixels, dtype=np.int32)
    pixel_index = np.empty(num_pixels, dtype=np.int32)

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    batches = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", unit="batch")
    flat_masks = masks.reshape(masks.shape[0], -1).numpy()
    for first in batches:
        block = extractor.extract(images[first : first + batch_size])  # (B, D, H, W) float32
        block = block.reshape(block.shape[0], dim, -1)
        for row in range(block.shape[0]):
            index = first + row
            pixel_ids = torch.from_numpy(chosen[index])
            start, stop = offsets[index], offsets[index + 1]
            features[start:stop] = block[row][:, pixel_ids].T.numpy().astype(np.float16)
            labels[start:stop] = flat_masks[index, chosen[index]]
            image_index[start:stop] = index
            pixel_index[start:stop] = chosen[index]
    if cache_dir is not None:
        features.flush()
        np.save(Path(cache_dir) / "labels.npy", labels)
        np.save(Path(cache_dir) / "image_index.npy", image_index)
        np.save(Path(cache_dir) / "pixel_index.npy", pixel_index)
    return PixelFeatures(features, labels, image_index, estimate, pixel_index)


def load_pixel_features(cache_dir: str | Path) -> PixelFeatures:
    """Open a cache written by `extract_pixel_features(cache_dir=...)` (features memory-mapped)."""
    cache = Path(cache_dir)
    try:
        features = np.load(cache / "features.f16.npy", mmap_mode="r")
        labels = np.load(cache / "labels.npy")
        image_index = np.load(cache / "image_index.npy")
        pixel_path = cache / "pixel_index.npy"
        pixel_index = np.load(pixel_path) if pixel_path.exists() else None
    except FileNotFoundError as err:
        raise PairforgeError(f"feature cache {cache} is incomplete ({err.filename})") from err
    return PixelFeatures(features, labels, image_index, pixel_index=pixel_index)


def _over_budget_message(estimate: MemoryEstimate, counts: list[int], budget: int) -> str:
    need = estimate.ram_bytes
    per_pixel = estimate.stored_bytes / max(estimate.num_pixels, 1)
    fixes = []
    if not estimate.on_disk:
        fixes.append(
            f"a feature cache folder (--cache DIR) keeps the {_gib(estimate.stored_bytes)} of "
            f"features on disk (RAM then {_gib(estimate.working_bytes)})"
        )
    # Pixels per image that would fit the budget with the working buffer kept.
    room = budget - estimate.working_bytes
    if room > 0 and counts:
        fit = int(room / per_pixel / len(counts))
        if fit > 0:
            fixes.append(f"--pixels-per-image {fit} (or fewer) fits")
    fixes.append("fewer images (--max-images), fewer timesteps or blocks, or a smaller batch")
    return (
        f"pixel features need {_gib(need)} of RAM ({estimate.num_pixels} pixels x "
        f"{estimate.feature_dim} features as float16 + a {_gib(estimate.working_bytes)} working "
        f"batch), over the budget of {_gib(budget)} (--memory-budget-gib); " + "; ".join(fixes)
    )


def parse_blocks(text: str | None) -> tuple[str, ...] | None:
    """ "up_blocks.1,up_blocks.2" -> ("up_blocks.1", "up_blocks.2"); None/"" -> None (all up)."""
    if not text:
        return None
    names = tuple(part.strip() for part in re.split(r"[,\s]+", text) if part.strip())
    return names or None
