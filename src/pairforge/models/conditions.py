"""Checks shared by pairforge's conditioned denoisers (SemanticUNet, SuperResUNet): their block
layout, their condition inputs, and the broadcasting of per-sample values."""

from __future__ import annotations

import torch

from pairforge.errors import PairforgeError


def block_layout(
    model: str, block_out_channels, attention_levels
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(block_out_channels, attention_levels) as tuples; raise unless there is one attention
    flag per block."""
    block_out_channels, attention_levels = tuple(block_out_channels), tuple(attention_levels)
    if len(attention_levels) != len(block_out_channels):
        raise PairforgeError(
            f"{model}: attention_levels {attention_levels} must have one entry per "
            f"block_out_channels {block_out_channels}; give {len(block_out_channels)} booleans."
        )
    return block_out_channels, attention_levels


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
