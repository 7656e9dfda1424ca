"""Per-pixel features from a frozen diffusion U-Net: decoder block outputs at a few noise levels.

Method (Baranchuk et al., ICLR 2022): noise each image once per timestep t with ONE fixed seeded
noise tensor eps, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (the scheduler's `add_noise`),
run the denoiser, keep the outputs of chosen decoder blocks (forward hooks, addressed by module
name such as "up_blocks.1"), upsample each bilinearly to the input size and concatenate along
channels. Feature order: timestep-major, then blocks in the order given. Widths come from the
model config.

Noise levels: the default t = 50, 150, 250 are Baranchuk's timesteps; `FeatureConfig.noise_levels`
states levels independently of the schedule ("abar:..", "logsnr:..", "baranchuk"), resolved to
the nearest timesteps of the model's own scheduler (`pairforge.seg.noise_levels`, which also
gives the measurement behind the default).

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

Pixel feature sets for training a head (memory estimate, subsampling, memmap cache) are built
by `pairforge.seg.pixels.extract_pixel_features`; feature sources are loaded by
`pairforge.seg.source.load_feature_source`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from pairforge.core.features import block_features, fixed_noise, pool
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError
from pairforge.seg.noise_levels import logsnr_of_abar, parse_noise_levels, resolve_feature_config

DEFAULT_TIMESTEPS = (50, 150, 250)
MASK_FILLS = ("zeros", "noise", "mean")


@dataclass(frozen=True)
class FeatureConfig:
    """What to extract; saved with a segmentation head so prediction uses the same features.

    timesteps: noise levels t in 0..T-1 of the training schedule (default 50, 150, 250 of 1000,
        Baranchuk's timesteps; the default because it beat the published noise levels on the
        built-in grains, see `pairforge.seg.noise_levels`). Ignored when `noise_levels` is given:
        the extractor overwrites it with the resolved timesteps.
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
        return tuple(logsnr_of_abar(a) for a in self.abar)

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


def parse_blocks(text: str | None) -> tuple[str, ...] | None:
    """ "up_blocks.1,up_blocks.2" -> ("up_blocks.1", "up_blocks.2"); None/"" -> None (all up)."""
    if not text:
        return None
    names = tuple(part.strip() for part in re.split(r"[,\s]+", text) if part.strip())
    return names or None


def feature_config_from_flags(
    timesteps: str | None,
    noise_levels: str | None,
    blocks: str | None,
    noise_seed: int,
    mask_fill: str,
) -> FeatureConfig:
    """The FeatureConfig of `pairforge seg fit`'s flags: --timesteps "50,150,250" (None: the
    default) or --noise-levels (checked here, resolved by the extractor), --blocks, --noise-seed,
    --mask-fill. PairforgeError naming the flag for bad values or both level flags."""
    if timesteps is not None and noise_levels is not None:
        raise PairforgeError(
            f"--timesteps {timesteps!r} and --noise-levels {noise_levels!r} both given; pass one"
        )
    steps = DEFAULT_TIMESTEPS
    if timesteps is not None:
        try:
            steps = tuple(int(t) for t in timesteps.split(",") if t.strip())
        except ValueError as err:
            raise PairforgeError(
                f"--timesteps {timesteps!r}: use integers like 50,150,250"
            ) from err
    if noise_levels is not None:
        try:
            parse_noise_levels(noise_levels)
        except PairforgeError as err:
            raise PairforgeError(f"--noise-levels: {err}") from err
    return FeatureConfig(
        steps, parse_blocks(blocks), noise_seed, mask_fill, noise_levels=noise_levels
    )
