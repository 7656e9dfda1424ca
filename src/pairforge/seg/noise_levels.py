"""Noise levels of the feature timesteps: parsing "abar:" / "logsnr:" / preset forms and resolving
them to the nearest timesteps of a model's own schedule.

Timesteps mean different noise on different schedules. The default t = 50, 150, 250 are
Baranchuk's timesteps on the linear schedule (abar 0.970 / 0.786 / 0.521); on the cosine
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
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from pairforge.errors import PairforgeError

NOISE_LEVEL_KINDS = ("abar", "logsnr")
# Baranchuk et al.'s timesteps and schedule (guided-diffusion "linear": betas 1e-4..0.02, T=1000).
BARANCHUK_TIMESTEPS = (50, 150, 250)
NOISE_LEVEL_PRESETS = ("baranchuk",)


def logsnr_of_abar(abar: float) -> float:
    """log(abar / (1 - abar)) in nats."""
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


def resolve_feature_config(config: Any, scheduler_config: dict[str, Any]) -> Any:
    """A FeatureConfig with noise_levels resolved to timesteps and `abar` filled for this
    scheduler (DDPMScheduler config); timesteps outside the schedule are a PairforgeError."""
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
