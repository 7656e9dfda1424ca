"""Exponential moving average of model weights with the usual warm-up of the decay."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps `self.model`, a frozen copy whose weights track the trained model.

    decay at update k (k = 0, 1, ...): min(decay, 1 - (1 + k / inv_gamma) ** -power), so the
    first update copies the weights and early averages forget the random initialization fast.
    """

    def __init__(self, model: torch.nn.Module, decay=0.9999, power=2 / 3, inv_gamma=1.0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.power, self.inv_gamma = decay, power, inv_gamma
        self.num_updates = 0

    def current_decay(self) -> float:
        warm = 1.0 - (1.0 + self.num_updates / self.inv_gamma) ** -self.power
        return max(0.0, min(self.decay, warm))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """Move the average towards `model` (same architecture, unwrapped); returns the decay used."""
        decay = self.current_decay()
        for averaged, current in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current.detach().to(averaged.dtype), 1.0 - decay)
        for averaged, current in zip(self.model.buffers(), model.buffers(), strict=True):
            averaged.copy_(current)
        self.num_updates += 1
        return decay
