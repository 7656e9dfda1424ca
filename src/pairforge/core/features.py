"""Diffusion features: block outputs of a frozen denoiser at x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, with one fixed seeded noise tensor eps, captured by forward hooks.

The few-label head (`seg.features.DiffusionFeatureExtractor`: decoder blocks at a few timesteps,
pooled by bilinear upsampling to the image size) and the domain-feature FID row
(`eval.domain.DomainFeatureExtractor`: the middle block at one timestep, pooled by the spatial
mean) are two configurations of `block_features`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from pairforge.errors import PairforgeError

POOLINGS = ("upsample", "mean")


class _StopForward(Exception):
    """Raised by a hook once every wanted block ran: nothing after them needs to run."""


def fixed_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The one noise tensor eps of shape `shape` (e.g. (C, H, W)) drawn on the CPU from `seed`."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))


def pool(block_output: torch.Tensor, pooling: str, size: tuple[int, int] | None = None):
    """(B, D, h, w) -> "upsample": bilinear to (B, D, *size); "mean": the spatial mean (B, D)."""
    if pooling == "mean":
        return block_output.mean(dim=(-2, -1))
    if pooling == "upsample":
        return F.interpolate(block_output, size=size, mode="bilinear", align_corners=False)
    raise PairforgeError(f"pooling {pooling!r} is unknown; use one of {', '.join(POOLINGS)}")


def block_features(
    model: torch.nn.Module,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    blocks: Sequence[str],
    *,
    stop_early: bool = False,
    call: Callable[[torch.Tensor, torch.Tensor], object] | None = None,
    model_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """{block name: its output (B, D, h, w) float32} of one forward pass of `model` on x_t.

    blocks: dotted module names (e.g. "up_blocks.1", "mid_block"); stop_early: skip the rest of
    the network once every block ran; call(x_t, timesteps): how to run the model (default
    `model(x_t, timesteps, **model_kwargs)`, e.g. with an sdm segmap).
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output[0] if isinstance(output, tuple) else output
            if stop_early and len(captured) == len(blocks):
                raise _StopForward

        return hook

    hooks = [modules[name].register_forward_hook(capture(name)) for name in blocks]
    try:
        if call is not None:
            call(x_t, timesteps)
        else:
            model(x_t, timesteps, **(model_kwargs or {}))
    except _StopForward:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    missing = [name for name in blocks if name not in captured]
    if missing:
        raise PairforgeError(f"feature block(s) {missing} were never run by the model")
    return {name: captured[name].float() for name in blocks}
