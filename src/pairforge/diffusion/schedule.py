"""Noise schedules as diffusers DDPMScheduler configs, and their alpha-bar constants in float64."""

from __future__ import annotations

from typing import Any

from pairforge.errors import PairforgeError

# Our names -> diffusers names.
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}


def make_scheduler_config(
    schedule: str = "linear", prediction: str = "eps", num_train_timesteps: int = 1000
) -> dict[str, Any]:
    """A DDPMScheduler config dict (saved as RUN/model/scheduler_config.json).

    schedule: "linear" (DDPM betas 1e-4..0.02) or "cosine" (Nichol & Dhariwal, diffusers
    "squaredcos_cap_v2"). prediction: "eps" or "v". Samples are not clipped: normalized data
    may leave [-1, 1] slightly (robust percentiles).
    """
    if schedule not in SCHEDULES:
        raise PairforgeError(
            f"diffusion.schedule={schedule!r} is unknown; use one of {', '.join(SCHEDULES)}."
        )
    if prediction not in PREDICTIONS:
        raise PairforgeError(
            f"diffusion.prediction={prediction!r} is unknown; use one of {', '.join(PREDICTIONS)}."
        )
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=SCHEDULES[schedule],
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type=PREDICTIONS[prediction],
        clip_sample=False,
        variance_type="fixed_small",
    )
    return dict(scheduler.config)


def prediction_of(scheduler_config: dict[str, Any]) -> str:
    """ "eps" or "v": what the model trained with this scheduler config predicts."""
    inverse = {v: k for k, v in PREDICTIONS.items()}
    name = scheduler_config.get("prediction_type", "epsilon")
    if name not in inverse:
        raise PairforgeError(f"scheduler prediction_type={name!r} is unsupported; use eps or v.")
    return inverse[name]


def alphas_cumprod(scheduler_config: dict[str, Any]):
    """abar_t for t = 0..T-1 as a float64 tensor (T,), from the scheduler's betas.

    The products are taken in float64 so that sqrt(1 - abar_t) stays accurate near t = 0.
    """
    import torch
    from diffusers import DDPMScheduler

    betas = DDPMScheduler.from_config(scheduler_config).betas.to(torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)
