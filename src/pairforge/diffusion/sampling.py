"""Samplers (DDPM ancestral, DDIM, DPM-Solver++) over diffusers schedulers, one seed per sample."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pairforge.errors import PairforgeError

SAMPLERS = ("dpm++", "ddim", "ddpm")
DEFAULT_STEPS = {"dpm++": 25, "ddim": 50, "ddpm": 1000}


# Log-SNR floor of the deterministic solvers: lambda = log(alpha / sigma) >= -5.1 (diffusers'
# lambda_min_clipped, SNR >= 3.7e-5). The cosine schedule ends at abar = 2.4e-9 (t = 999), where
# an eps-model's x0 prediction (x_t - sigma eps) / alpha divides by alpha = 4.9e-5; the clip moves
# the first step to t = 995 (alpha = 6.1e-3), the linear schedule (lambda_999 = -5.06) is unclipped.
LAMBDA_MIN_CLIPPED = -5.1


def make_sampling_scheduler(sampler: str, scheduler_config: dict[str, Any], steps: int):
    """A diffusers scheduler for `sampler` built from the training DDPMScheduler config,
    with `steps` timesteps set (on the cosine schedule steps >= 250 give 1 to 4 fewer: the
    T / steps spacing then runs out below the clipped start).

    ddpm  -> DDPMScheduler (ancestral, stochastic; steps < T skips timesteps, "leading" spacing).
             Its first x0 prediction on the cosine schedule still divides by sqrt(abar_999) =
             4.9e-5, but the ancestral noise forgets that early error (see the table).
    ddim  -> DDIM with eta 0, run as first-order DPM-Solver++ (DPMSolverMultistepScheduler,
             solver_order 1), whose update x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^-h) x0_hat
             is exactly DDIM's (Lu et al. 2022, DPM-Solver sec. 4.1), on the same grid as dpm++.
             diffusers' DDIMScheduler cannot start below t = T-1: its step() derives the next
             timestep as t - T // steps, so a clipped grid would not be followed.
    dpm++ -> DPMSolverMultistepScheduler, dpmsolver++ 2M (deterministic), lower order at the end.

    Both ODE solvers use "trailing" spacing (T / steps apart, the first timestep the largest t
    whose log-SNR lambda = log(alpha / sigma) >= LAMBDA_MIN_CLIPPED = -5.1: t = 995 on the cosine
    schedule, 999 on the linear one) and end at sigma = 0 (final_sigmas_type "zero": the last
    step returns the x0 prediction, first order). On a trained 32 px cosine model the clip cut
    dpm++'s distance to a 1000-step ODE solution at 20 steps from 0.062 to 0.019
    (bench/bench_train_sample.py).

    Oracle accuracy (tests/test_diffusion_sampling.py: data x0 ~ N(0, s^2), s = 0.5, a denoiser
    returning the exact E[eps | x_t] or E[v | x_t], 16 seeds of 1 x 32 x 32). "flow map": RMS
    distance of each sample to where the exact probability-flow ODE takes its noise, in units of
    s (identical for eps and v); "std": sample std / s - 1; "1 % eps / v": RMS move of the
    samples, in s, when the model output is 1 % too large:

        sampler  steps  schedule  flow map    std     1 % eps  1 % v
        ddim       50   cosine     0.031     -3.2 %    0.089   0.007
        ddim       25   cosine     0.060     -6.1 %    0.127   0.007
        ddim       50   linear     0.057     -5.8 %    0.057   0.007
        dpm++      25   cosine     0.0034    +0.2 %    0.120   0.007
        dpm++      25   linear     0.022     -2.3 %    0.054   0.007
        ddpm     1000   cosine      -        -0.4 %    0.014   0.007
        ddpm     1000   linear      -        -0.7 %    0.014   0.007

    DDIM is first order (flow-map error ~ 1 / steps); dpm++ at 25 steps on the linear schedule
    is limited by its last, first-order jump from t = 39 (sigma / alpha = 0.14) to 0 (50 steps:
    0.0011). DDPM's fixed_small variance ends slightly narrow (closed form: -0.40 % cosine,
    -0.78 % linear at 1000 steps; -3.5 % / -6.3 % at 100). Before the log-SNR clip ddim started
    at t = 999 and a 1 % eps error moved cosine samples by 5.9 s (50 steps) and 11.4 s (25).
    """
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    if sampler not in SAMPLERS:
        raise PairforgeError(f"sampler={sampler!r} is unknown; use one of {', '.join(SAMPLERS)}.")
    num_train = int(scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= num_train:
        raise PairforgeError(
            f"steps={steps} is out of range; use 1..{num_train} (e.g. 25 for dpm++, 50 for ddim)."
        )
    if sampler == "ddpm":
        scheduler = DDPMScheduler.from_config(scheduler_config)
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(
            scheduler_config,
            algorithm_type="dpmsolver++",
            solver_order=1 if sampler == "ddim" else 2,
            variance_type=None,
            lower_order_final=True,
            euler_at_final=False,
            timestep_spacing="trailing",
            lambda_min_clipped=LAMBDA_MIN_CLIPPED,
            final_sigmas_type="zero",
            use_karras_sigmas=False,
            thresholding=False,
        )
    scheduler.set_timesteps(steps)
    return scheduler


def model_denoiser(model: torch.nn.Module, channels_last: bool = False) -> Callable:
    """denoise_fn(x_t, t) -> model(x_t, t).sample for a UNet2DModel-like network.

    channels_last: feed NHWC-strided inputs (faster convolutions with bf16 on CPU and GPU);
    put the model in channels_last as well (`model.to(memory_format=torch.channels_last)`).
    """

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return model(x_t, t).sample

    return denoise


def seeded_noise(shape: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """(B, *shape) standard normal noise, row b drawn from generators[b] on the CPU."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


@torch.no_grad()
def sample(
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    seeds: Sequence[int],
    sampler: str = "dpm++",
    steps: int | None = None,
    scheduler_config: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> torch.Tensor:
    """Generate len(seeds) samples x0 (B, C, H, W) float32 on `device`, in model units (~[-1, 1]).

    denoise_fn(x_t (B,C,H,W), t (B,) long) -> model output (eps or v, per scheduler_config's
    prediction_type). shape: (C, H, W) of one sample. seeds: one int per sample; sample b uses
    its own CPU torch.Generator(seeds[b]) for the initial noise AND the ancestral noise, so the
    same seed gives the same sample whatever the batch size (up to float round-off of batched
    kernels). steps: None = 25 (dpm++), 50 (ddim), 1000 (ddpm). dtype: torch.float32, or
    torch.bfloat16 to run denoise_fn under bf16 autocast (solver state stays float32).
    scheduler_config: the training DDPMScheduler config (RUN/model/scheduler_config.json).
    Accuracy per sampler (against an exact Gaussian-data oracle): see make_sampling_scheduler;
    at the default steps dpm++ lands within 0.3 % (cosine) / 2.2 % (linear) of the exact ODE
    solution, ddim within 3 % / 6 %, and ddpm's sample std is within 0.4 % / 0.7 % of the data's.
    """
    if scheduler_config is None:
        raise PairforgeError("sample() needs scheduler_config (RUN/model/scheduler_config.json).")
    if len(seeds) == 0:
        raise PairforgeError("sample() needs at least one seed.")
    if dtype not in (torch.float32, torch.bfloat16):
        raise PairforgeError(f"sample(dtype={dtype}) is unsupported; use float32 or bfloat16.")
    steps = DEFAULT_STEPS.get(sampler, 25) if steps is None else int(steps)
    scheduler = make_sampling_scheduler(sampler, scheduler_config, steps)
    device = torch.device(device)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    batch = len(seeds)

    x = seeded_noise(shape, generators).to(device) * scheduler.init_noise_sigma
    use_autocast = dtype == torch.bfloat16
    from tqdm.auto import tqdm

    for t in tqdm(scheduler.timesteps, desc=f"{sampler} x{batch}", disable=not progress):
        model_input = scheduler.scale_model_input(x, t)
        t_batch = torch.full((batch,), int(t), device=device, dtype=torch.long)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            model_output = denoise_fn(model_input, t_batch)
        model_output = model_output.float()
        if sampler == "ddpm":
            # DDPMScheduler draws its ancestral noise per sample from generators[b] when given a list.
            x = scheduler.step(model_output, t, x, generator=generators).prev_sample
        else:
            # Deterministic solvers (DDIM eta 0, DPM-Solver++ 2M) need no noise.
            x = scheduler.step(model_output, t, x).prev_sample
    return x.float()
