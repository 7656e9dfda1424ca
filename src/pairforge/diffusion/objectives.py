"""Training objectives: forward process q(x_t | x_0), eps / v / x0 conversions, min-SNR loss."""

from __future__ import annotations

import torch


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] (float64 table, (T,)) broadcast to `like` (B, ...) in like's dtype and device."""
    picked = values.to(like.device)[t.to(like.device)]
    return picked.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def q_sample(x0, eps, t, alphas_cumprod):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (DDPM eq. 4; note the square root on abar).

    x0, eps: (B, C, H, W); t: (B,) long in [0, T); alphas_cumprod: (T,) float64.
    """
    sqrt_abar = _at(alphas_cumprod.sqrt(), t, x0)
    sqrt_one_minus_abar = _at((1.0 - alphas_cumprod).sqrt(), t, x0)
    return sqrt_abar * x0 + sqrt_one_minus_abar * eps


def v_from_eps(x0, eps, t, alphas_cumprod):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0   (Salimans & Ho 2022, sec. 4)."""
    return _at(alphas_cumprod.sqrt(), t, x0) * eps - _at((1 - alphas_cumprod).sqrt(), t, x0) * x0


def x0_from_v(x_t, v, t, alphas_cumprod):
    """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    return _at(alphas_cumprod.sqrt(), t, x_t) * x_t - _at((1 - alphas_cumprod).sqrt(), t, x_t) * v


def eps_from_v(x_t, v, t, alphas_cumprod):
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
    return _at((1 - alphas_cumprod).sqrt(), t, x_t) * x_t + _at(alphas_cumprod.sqrt(), t, x_t) * v


def x0_from_eps(x_t, eps, t, alphas_cumprod):
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (x_t - _at((1 - alphas_cumprod).sqrt(), t, x_t) * eps) / _at(
        alphas_cumprod.sqrt(), t, x_t
    )


def snr(t, alphas_cumprod):
    """Signal-to-noise ratio abar_t / (1 - abar_t) at integer timesteps t (B,), float64."""
    abar = alphas_cumprod.to(t.device)[t]
    return abar / (1.0 - abar)


def min_snr_weight(t, alphas_cumprod, gamma: float, prediction: str):
    """Per-sample loss weight of Min-SNR-gamma (Hang et al. 2023), (B,) float64.

    The target weighting is min(SNR, gamma) on the x0-error. Expressed on the network's own
    target: eps-prediction -> min(SNR, gamma) / SNR; v-prediction -> min(SNR, gamma) / (SNR + 1).
    """
    ratio = snr(t, alphas_cumprod)
    clipped = ratio.clamp(max=gamma)
    if prediction == "eps":
        return clipped / ratio
    if prediction == "v":
        return clipped / (ratio + 1.0)
    raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")


def training_target(x0, eps, t, alphas_cumprod, prediction: str):
    """What the network regresses: eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return v_from_eps(x0, eps, t, alphas_cumprod)
    raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")


def diffusion_loss(
    model_output, x0, eps, t, alphas_cumprod, prediction: str, min_snr_gamma: float | None = None
):
    """Per-sample weighted MSE (B,) float32 between the model output and its target.

    With min_snr_gamma None every sample weighs 1 (the plain DDPM "simple" loss).
    """
    target = training_target(x0, eps, t, alphas_cumprod, prediction)
    per_sample = (model_output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        weight = min_snr_weight(t, alphas_cumprod, min_snr_gamma, prediction)
        per_sample = per_sample * weight.to(per_sample.device, per_sample.dtype)
    return per_sample
