"""Model factory: named U-Net presets (tiny / small / base) for any channel count and model class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from pairforge.errors import PairforgeError


@dataclass(frozen=True)
class ModelPreset:
    """U-Net size: one entry of `block_out_channels` / `attention_levels` per resolution level.

    block_out_channels: channel width per level (each divisible by norm_num_groups).
    layers_per_block:   residual blocks per level.
    attention_levels:   self-attention on (True) or off per level.
    norm_num_groups:    GroupNorm groups.
    dropout:            residual-block dropout in [0, 1).
    """

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[bool, ...]
    norm_num_groups: int = 32
    dropout: float = 0.0


PRESETS: dict[str, ModelPreset] = {
    # Tests: two levels, no attention; a forward pass at 16 px takes milliseconds.
    "tiny": ModelPreset((16, 32), 1, (False, False), norm_num_groups=8),
    # CPU demo at 32-64 px: ~1.5 GFLOP/image at 64 px, attention only at the coarsest level.
    "small": ModelPreset((32, 64, 128, 128), 1, (False, False, False, True), norm_num_groups=16),
    # GPU, paper-sized (DDPM CIFAR/CelebA-64 scale, ~35M parameters at 64 px).
    "base": ModelPreset((128, 256, 256, 256), 2, (False, True, False, False), norm_num_groups=32),
}

# The denoiser classes a run's pairforge.json may name (model_class).
MODEL_CLASSES = ("SemanticUNet", "SuperResUNet", "UNet2DModel")


def resolve_preset(preset: str, overrides: dict[str, Any] | None = None) -> ModelPreset:
    """The named preset with `overrides` (keys = ModelPreset fields, None values ignored) applied."""
    if preset not in PRESETS:
        raise PairforgeError(
            f"model.preset={preset!r} is unknown; use one of {', '.join(PRESETS)} "
            "(or override block_out_channels / layers_per_block / attention_levels)."
        )
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(chosen) - set(asdict(PRESETS[preset])))
    if unknown:
        raise PairforgeError(
            f"model override {unknown[0]!r} is unknown; use one of "
            f"{', '.join(asdict(PRESETS[preset]))}."
        )
    for key in ("block_out_channels", "attention_levels"):
        if key in chosen:
            chosen[key] = tuple(chosen[key])
    spec = replace(PRESETS[preset], **chosen)
    if "block_out_channels" in chosen and "attention_levels" not in chosen:
        # A different depth without explicit attention levels: attend at the coarsest level only.
        levels = len(spec.block_out_channels)
        spec = replace(spec, attention_levels=tuple(i == levels - 1 for i in range(levels)))
    _check_preset(spec)
    return spec


def _check_preset(spec: ModelPreset) -> None:
    if len(spec.attention_levels) != len(spec.block_out_channels):
        raise PairforgeError(
            f"model.attention_levels={list(spec.attention_levels)} must have one entry per level "
            f"of model.block_out_channels={list(spec.block_out_channels)}."
        )
    for width in spec.block_out_channels:
        if width % spec.norm_num_groups:
            raise PairforgeError(
                f"model.block_out_channels entry {width} is not divisible by "
                f"model.norm_num_groups={spec.norm_num_groups}; pick widths that are multiples."
            )
    if spec.layers_per_block < 1:
        raise PairforgeError(f"model.layers_per_block={spec.layers_per_block} must be >= 1.")


def build_model(
    model_class: str,
    preset: str,
    in_channels: int,
    out_channels: int,
    sample_size: int,
    overrides: dict[str, Any] | None = None,
    **class_kwargs: Any,
):
    """A freshly initialized denoiser of class `model_class`, sized by the named preset.

    UNet2DModel   -> diffusers UNet2DModel(sample, timestep).sample
    SemanticUNet  -> SemanticUNet(sample, timestep, segmap).sample; class_kwargs: num_classes
    SuperResUNet  -> SuperResUNet(sample, timestep, low_res, noise_level).sample; class_kwargs:
                     low_res_channels, low_res_image_channels
    (`pairforge.core.tasks` says which class and arguments each task uses.)
    in_channels / out_channels: channels of the noisy sample / of the prediction (eps or v).
    sample_size: training resolution in pixels (the models are convolutional; other sizes work).
    overrides["fraction_conditioning"] = {"drop_prob": p} (with class_kwargs fraction_classes K):
    a `models.fractions.FractionConditionedUNet` around the UNet2DModel.
    """
    if model_class not in MODEL_CLASSES:
        raise PairforgeError(
            f"model class {model_class!r} is unknown; use one of {', '.join(MODEL_CLASSES)}."
        )
    overrides = dict(overrides or {})
    fractions = overrides.pop("fraction_conditioning", None)  # {"drop_prob": p} or None
    fraction_classes = class_kwargs.pop("fraction_classes", None)
    spec = resolve_preset(preset, overrides)
    levels = len(spec.block_out_channels)
    if sample_size % 2 ** (levels - 1):
        raise PairforgeError(
            f"resolution {sample_size} px is not divisible by 2^{levels - 1} (the U-Net has "
            f"{levels} levels); pick a multiple of {2 ** (levels - 1)} or a shallower model."
        )
    common = {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": spec.block_out_channels,
        "layers_per_block": spec.layers_per_block,
        "norm_num_groups": spec.norm_num_groups,
        "dropout": spec.dropout,
    }
    if fractions and model_class != "UNet2DModel":
        raise PairforgeError(
            f"model.fraction_conditioning=true applies to UNet2DModel tasks (mask, joint), not "
            f"a {model_class}; set model.fraction_conditioning=false."
        )
    if model_class == "UNet2DModel":
        unet = _unet2d(spec, common)
        if not fractions:
            return unet
        from pairforge.models.fractions import build_fraction_unet

        return build_fraction_unet(unet, fraction_classes or 0, fractions["drop_prob"])
    return load_model_class(model_class)(
        attention_levels=spec.attention_levels, **common, **class_kwargs
    )


def _unet2d(spec: ModelPreset, common: dict[str, Any]):
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in spec.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.attention_levels))
    return UNet2DModel(
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=min(64, spec.block_out_channels[-1]),
        **common,
    )


def load_model_class(name: str):
    """The denoiser class called `name` (UNet2DModel, SemanticUNet, SuperResUNet), imported lazily."""
    if name == "UNet2DModel":
        from diffusers import UNet2DModel

        return UNet2DModel
    if name == "SemanticUNet":
        from pairforge.models.sdm import SemanticUNet

        return SemanticUNet
    if name == "SuperResUNet":
        from pairforge.models.sr import SuperResUNet

        return SuperResUNet
    raise PairforgeError(f"model class {name!r} is unknown; expected one of {list(MODEL_CLASSES)}.")


def load_pretrained(model_class, directory):
    """`model_class.from_pretrained(directory)` with every parameter and buffer in freshly
    allocated (64-byte aligned) memory, in eval mode. A UNet2DModel folder with a fraction
    embedding (models.fractions) loads as the FractionConditionedUNet around it.

    Why: from_pretrained hands over tensors that point into the safetensors file buffer at the
    file's byte offsets (8-byte aligned, not 64). oneDNN/MKL choose a different GEMM kernel for a
    misaligned weight, with a different summation order, so a loaded model's outputs differed from
    the saved model's by ~1e-6 (float32 round-off) although every weight was bit-identical.
    Copying into the allocator's own aligned storage makes save -> load -> forward bit-identical.
    """
    import torch

    from pairforge.models.fractions import FractionConditionedUNet, is_fraction_folder

    if model_class.__name__ == "UNet2DModel" and is_fraction_folder(directory):
        # A fraction-conditioned run: its UNet2DModel folder plus the fraction embedding.
        model_class = FractionConditionedUNet
    model = model_class.from_pretrained(directory)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
    return model.eval()
