"""One optimizer step of diffusion training: the body of the training loop, callable on its own.

`train.loop.train` calls `train_step` once per step; the benchmark (bench/bench_train_sample.py)
calls the same function, so what it times is what training runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pairforge.core.tasks import Task, TaskLayout, TrainingSettings


class NonFiniteStep(RuntimeError):
    """The loss or the gradient norm of a step is NaN / Inf; nothing reached the weights."""


@dataclass
class StepModel:
    """What a step updates and how.

    model: the (accelerate-prepared) denoiser; raw_model: the unwrapped one (EMA source);
    accelerator: accelerate.Accelerator (backward, no_sync, reduce, clipping).
    prediction / min_snr_gamma: the diffusion objective; grad_clip None = off;
    bf16: bf16 autocast of the forward pass; channels_last: x_t in channels-last memory format.
    """

    model: torch.nn.Module
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: object | None
    accelerator: object
    task: Task
    layout: TaskLayout
    task_settings: TrainingSettings
    abar: torch.Tensor
    prediction: str
    min_snr_gamma: float | None = None
    grad_clip: float | None = 1.0
    bf16: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class StepResult:
    """loss: mean over micro-batches and processes; grad_norm: before clipping (None if off);
    ema_decay: the decay of this step's EMA update (0 without EMA)."""

    loss: float
    grad_norm: float | None
    ema_decay: float


def train_step(
    state: StepModel,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    seeds: Sequence[tuple[int, int]],
    lr: float,
) -> StepResult:
    """Forward and backward over the micro-batches (gradients synced on the last one), then
    clipping, the optimizer step and the EMA update.

    micro_batches: training items {"image", "mask"} on the CPU; seeds: per micro-batch
    (noise seed, dropout seed): the noise, timesteps and condition drops come from a generator
    of the first, the model's dropout from the global torch seed set to the second.
    Raises NonFiniteStep before the optimizer step when the loss or gradient norm is not finite.
    """
    from pairforge.diffusion.objectives import diffusion_loss, q_sample

    accelerator, model = state.accelerator, state.model
    device = state.abar.device
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    step_loss = torch.zeros((), device=device)
    # A fraction-conditioned model (model.fraction_conditioning) adds its drop rate.
    task_settings = state.task_settings.for_model(state.raw_model)
    accumulation = len(micro_batches)
    for micro, (batch, (noise_seed, dropout)) in enumerate(zip(micro_batches, seeds, strict=True)):
        generator = torch.Generator().manual_seed(noise_seed)
        torch.manual_seed(dropout)
        x0, condition = state.task.training_inputs(state.layout, batch, generator, task_settings)
        t = torch.randint(0, len(state.abar), (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x0, eps, t = x0.to(device), eps.to(device), t.to(device)
        condition = {k: v.to(device) for k, v in condition.items()}
        x_t = q_sample(x0, eps, t, state.abar).float()
        if state.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        last_micro = micro == accumulation - 1
        with accelerator.no_sync(model) if not last_micro else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=state.bf16):
                prediction = model(x_t, t, **condition).sample
            loss = diffusion_loss(
                prediction, x0, eps, t, state.abar, state.prediction, state.min_snr_gamma
            ).mean()
            accelerator.backward(loss / accumulation)
        step_loss += loss.detach() / accumulation

    # Stop on a non-finite loss before it reaches the weights (every process sees the same
    # mean, so all stop together).
    mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
    if not np.isfinite(mean_loss):
        raise NonFiniteStep(f"the loss is {mean_loss} (not finite)")

    # Optimizer step with gradient clipping, then the EMA.
    grad_norm = (
        accelerator.clip_grad_norm_(model.parameters(), state.grad_clip)
        if state.grad_clip
        else None
    )
    if grad_norm is not None and not bool(torch.isfinite(grad_norm)):
        raise NonFiniteStep(f"the gradient norm is {float(grad_norm)} (not finite)")
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    ema_decay = state.ema.update(state.raw_model) if state.ema else 0.0
    return StepResult(
        loss=mean_loss,
        grad_norm=float(grad_norm) if grad_norm is not None else None,
        ema_decay=ema_decay,
    )
