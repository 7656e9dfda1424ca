"""Checks and broadcasting of the per-sample inputs of pairforge's conditioned denoisers."""

from __future__ import annotations

import torch

from pairforge.errors import PairforgeError


def check_condition(
    model: str, name: str, condition: torch.Tensor, sample: torch.Tensor, channels: int, fix: str
) -> None:
    """Raise unless `condition` is (B, channels, ...) for a sample (B, ...); the message names
    the model, the input and `fix` (the shape to pass)."""
    if condition.shape[0] != sample.shape[0] or condition.shape[1] != channels:
        raise PairforgeError(
            f"{model}: {name} shape {tuple(condition.shape)} does not fit sample "
            f"{tuple(sample.shape)}{fix}."
        )


def per_sample(
    value: torch.Tensor | float | int, batch: int, device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A scalar or (B,) value (timestep, noise level) as a (B,) tensor on `device`."""
    values = torch.as_tensor(value, device=device, dtype=dtype)
    if values.ndim == 0:
        values = values[None]
    return values.expand(batch)
