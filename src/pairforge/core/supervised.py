"""Supervised baseline segmenter (segmentation-models-pytorch) trained on the same labeled images.

The default network is a U-Net with a ResNet-18 encoder cut to depth 3 (stem, layer1, layer2:
strides 2, 4, 8) and decoder widths (64, 32, 16). No pretrained weights (offline). On 64 px
images this costs about 15 ms per image per training step on one CPU core, so an epoch over a
few dozen tiles takes about a second; the full-depth ResNet-18 U-Net is ~2.6x slower and its
stride-32 bottleneck is 2 px wide at 64 px anyway. Model selection uses the best validation
mIoU (never the test split).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.core.metrics import confusion_matrix, miou_from_confusion
from pairforge.data.codec import IGNORE_INDEX
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, atomic_write_text

# Encoder depth and decoder widths per architecture; depth 3 keeps 64 px training fast on CPU.
DEFAULT_ENCODER_DEPTH = 3
DEFAULT_DECODER_CHANNELS = (64, 32, 16)


def build_supervised_model(
    in_channels: int,
    num_classes: int,
    arch: str = "unet",
    encoder: str = "resnet18",
    encoder_depth: int = DEFAULT_ENCODER_DEPTH,
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER_CHANNELS,
) -> torch.nn.Module:
    """Build an untrained smp segmenter: input (B, in_channels, H, W) -> logits (B, K, H, W).

    `encoder_depth` and `decoder_channels` apply to "unet" / "unetplusplus"; other smp
    architectures ("fpn", "deeplabv3plus", ...) use their smp defaults. H and W need not be
    multiples of the network stride: `predict_supervised` and the training loop pad.
    """
    import segmentation_models_pytorch as smp

    kwargs: dict = {
        "encoder_name": encoder,
        "encoder_weights": None,  # offline: never download ImageNet weights
        "in_channels": in_channels,
        "classes": num_classes,
    }
    if arch.lower() in ("unet", "unetplusplus"):
        if len(decoder_channels) != encoder_depth:
            raise PairforgeError(
                f"decoder_channels {tuple(decoder_channels)} has {len(decoder_channels)} entries "
                f"but encoder_depth is {encoder_depth}; give one width per depth level"
            )
        kwargs.update(encoder_depth=encoder_depth, decoder_channels=tuple(decoder_channels))
    try:
        model = smp.create_model(arch, **kwargs)
    except (KeyError, ValueError) as err:
        raise PairforgeError(
            f"segmentation-models-pytorch cannot build arch={arch!r} encoder={encoder!r}: {err}; "
            "use e.g. arch='unet', encoder='resnet18'"
        ) from err
    _drop_unused_resnet_stages(model)
    return model


def _drop_unused_resnet_stages(model: torch.nn.Module) -> None:
    """Delete ResNet stages a shallow encoder never runs (smp keeps them; ~10 M dead weights)."""
    encoder = getattr(model, "encoder", None)
    if type(encoder).__name__ != "ResNetEncoder":
        return
    # Depth d runs the stem and layer1..layer(d-1); layer(d)..layer4 are never called.
    for stage in range(encoder._depth, 5):
        name = f"layer{stage}"
        if isinstance(getattr(encoder, name, None), torch.nn.Module):
            delattr(encoder, name)


def _network_stride(model: torch.nn.Module) -> int:
    depth = getattr(getattr(model, "encoder", None), "_depth", 5)
    return 2**depth


def _pad_to_multiple(images: torch.Tensor, masks: torch.Tensor | None, multiple: int):
    """Pad bottom/right so H and W are multiples of `multiple`; masks padded with ignore."""
    height, width = images.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images, masks
    images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
    if masks is not None:
        masks = F.pad(masks, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    return images, masks


def _validate(images: torch.Tensor, masks: torch.Tensor, num_classes: int, name: str) -> None:
    if images.ndim != 4 or masks.ndim != 3:
        raise PairforgeError(
            f"{name}: images must be (N, C, H, W) and masks (N, H, W); got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
        raise PairforgeError(
            f"{name}: images {tuple(images.shape)} and masks {tuple(masks.shape)} disagree in "
            "count or size; pass one (H, W) mask per image"
        )
    if images.shape[0] == 0:
        raise PairforgeError(f"{name}: no images given; pass at least one labeled image")
    labeled = masks[masks != IGNORE_INDEX]
    if labeled.numel() and (labeled.min() < 0 or labeled.max() >= num_classes):
        raise PairforgeError(
            f"{name}: masks hold class index {int(labeled.min())}..{int(labeled.max())} but "
            f"num_classes={num_classes}; masks must hold 0..{num_classes - 1} or 255 (ignore)"
        )


def _augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator):
    """Random flips and (for square crops) 90-degree rotations, same geometry for image and mask."""
    square = images.shape[-1] == images.shape[-2]
    out_images, out_masks = [], []
    for image, mask in zip(images, masks, strict=True):
        flip_h, flip_v, rotations = torch.randint(0, 4, (3,), generator=generator).tolist()
        if flip_h % 2:
            image, mask = image.flip(-1), mask.flip(-1)
        if flip_v % 2:
            image, mask = image.flip(-2), mask.flip(-2)
        if square and rotations:
            image = torch.rot90(image, rotations, dims=(-2, -1))
            mask = torch.rot90(mask, rotations, dims=(-2, -1))
        out_images.append(image)
        out_masks.append(mask)
    return torch.stack(out_images), torch.stack(out_masks)


def _seeded_model(in_channels: int, num_classes: int, arch: str, encoder: str, seed: int):
    """`build_supervised_model` with its initialization drawn from `seed`."""
    # Fork the global RNG so model initialization is seeded without disturbing the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_supervised_model(in_channels, num_classes, arch, encoder)


def _labeled_tensors(images, masks, num_classes: int, name: str):
    """(float32 images (N, C, H, W), long masks (N, H, W)), checked against each other."""
    images = torch.as_tensor(images, dtype=torch.float32)
    masks = torch.as_tensor(masks, dtype=torch.long)
    _validate(images, masks, num_classes, name)
    return images, masks


@dataclass(frozen=True)
class _EpochSettings:
    """How `_train_epoch` batches: batch size, augmentation, padding multiple, device."""

    batch_size: int
    augment: bool
    stride: int  # network stride: batches are padded to a multiple of it
    device: str


def _weighted_loss(logits, masks, weights):
    """Cross-entropy over labeled pixels; with per-sample `weights` (B,) a weighted mean over
    pixels (each pixel counts its sample's weight), else the plain mean."""
    if weights is None:
        return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
    per_pixel = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="none")
    pixel_weights = weights.to(per_pixel)[:, None, None] * (masks != IGNORE_INDEX)
    return (per_pixel * pixel_weights).sum() / pixel_weights.sum().clamp_min(1e-12)


def _train_epoch(model, optimizer, scheduler, images, masks, settings: _EpochSettings, generator,
                 weights=None):  # fmt: skip
    """One shuffled pass over (images, masks), one AdamW + cosine step per batch; mean loss.
    weights: None or per-sample loss weights (N,)."""
    model.train()
    order = torch.randperm(images.shape[0], generator=generator)
    loss_sum, num_batches = 0.0, 0
    for first in range(0, len(order), settings.batch_size):
        index = order[first : first + settings.batch_size]
        batch_images, batch_masks = images[index], masks[index]
        batch_weights = None if weights is None else weights[index]
        if settings.augment:
            batch_images, batch_masks = _augment_batch(batch_images, batch_masks, generator)
        batch_images, batch_masks = _pad_to_multiple(batch_images, batch_masks, settings.stride)
        if batch_images.shape[0] == 1:
            # BatchNorm cannot train on one sample of 1x1 bottleneck; duplicate it.
            batch_images, batch_masks = batch_images.repeat(2, 1, 1, 1), batch_masks.repeat(2, 1, 1)
            batch_weights = None if weights is None else batch_weights.repeat(2)
        logits = model(batch_images.to(settings.device))
        loss = _weighted_loss(logits, batch_masks.to(settings.device), batch_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item()
        num_batches += 1
    return loss_sum / num_batches


def train_supervised(
    train_images: torch.Tensor,
    train_masks: torch.Tensor,
    val_images: torch.Tensor | None,
    val_masks: torch.Tensor | None,
    *,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    arch: str = "unet",
    encoder: str = "resnet18",
    device: str = "cpu",
    augment: bool = True,
    val_every: int = 1,
    progress: bool = True,
    sample_weights: torch.Tensor | None = None,
    steps: int | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train an smp segmenter with cross-entropy; keep the weights of the best validation epoch.

    Args:
        train_images: float (N, C, H, W), already normalized (e.g. ChannelNormalizer, ~[-1, 1]).
        train_masks: long (N, H, W) class indices 0..K-1, 255 = ignore.
        val_images, val_masks: the same for validation; model selection by best val mIoU.
            None: no selection, the last epoch is returned (history says so).
        num_classes: K.
        epochs: passes over the training images (ceil(N / batch_size) AdamW steps each).
        seed: fixes initialization, shuffling and augmentation; same seed -> same weights.
        arch, encoder: smp architecture and encoder names (see `build_supervised_model`).
        augment: random flips and 90-degree rotations (square images).
        val_every: validate (and possibly keep the weights) every this many epochs and at the
            last epoch; > 1 saves time when validation is large compared with training.
        sample_weights: None (plain mean cross-entropy) or float (N,) >= 0 per training image:
            each labeled pixel's loss counts its image's weight (weighted mean per batch).
        steps: None, or train ceil(steps / steps per epoch) epochs instead of `epochs` (at least
            `steps` AdamW steps in whole epochs: the same training length whatever the number
            of training images, e.g. across label budgets).

    Returns:
        (model in eval mode on `device`, history) with history = {"epochs": [{"epoch",
        "train_loss", "val_miou", "seconds"}, ...], "best_epoch", "best_val_miou",
        "selection": "val_miou" | "last_epoch"}.
    """
    train_images, train_masks = _labeled_tensors(train_images, train_masks, num_classes, "train")
    has_val = val_images is not None and val_masks is not None
    if has_val:
        val_images, val_masks = _labeled_tensors(val_images, val_masks, num_classes, "val")
    sample_weights = _checked_weights(sample_weights, train_images.shape[0])
    if epochs < 1 or batch_size < 1 or val_every < 1:
        raise PairforgeError(
            f"epochs={epochs}, batch_size={batch_size}, val_every={val_every}: all must be >= 1"
        )

    steps_per_epoch = math.ceil(train_images.shape[0] / batch_size)
    if steps is not None:
        if steps < 1:
            raise PairforgeError(f"steps={steps}: give at least 1 (or None to use epochs)")
        epochs = math.ceil(steps / steps_per_epoch)
    model = _seeded_model(train_images.shape[1], num_classes, arch, encoder, seed).to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    step = _EpochSettings(batch_size, augment, _network_stride(model), device)

    history: dict = {"epochs": [], "best_epoch": None, "best_val_miou": None}
    best_state = None
    epoch_iter = range(1, epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="supervised", unit="epoch")
    for epoch in epoch_iter:
        start = time.perf_counter()
        loss = _train_epoch(model, optimizer, scheduler, train_images, train_masks, step,
                            generator, sample_weights)  # fmt: skip
        record = {"epoch": epoch, "train_loss": loss, "val_miou": None}
        if has_val and (epoch % val_every == 0 or epoch == epochs):
            record["val_miou"] = evaluate_supervised(
                model, val_images, val_masks, num_classes, batch_size
            )[0]
            if history["best_val_miou"] is None or record["val_miou"] > history["best_val_miou"]:
                history["best_val_miou"] = record["val_miou"]
                history["best_epoch"] = epoch
                best_state = copy.deepcopy(model.state_dict())
        record["seconds"] = time.perf_counter() - start
        history["epochs"].append(record)
        if progress:
            epoch_iter.set_postfix(loss=f"{record['train_loss']:.3f}", val=record["val_miou"])

    return _select_weights(model, history, best_state, epochs), history


def _checked_weights(weights, num_images: int) -> torch.Tensor | None:
    if weights is None:
        return None
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.shape != (num_images,) or not torch.isfinite(weights).all() or (weights < 0).any():
        raise PairforgeError(
            f"sample_weights: need {num_images} finite weights >= 0 (one per training image); "
            f"got shape {tuple(weights.shape)}"
        )
    return weights


def _select_weights(model, history: dict, best_state: dict | None, epochs: int):
    """Load the best validation epoch's weights (if any) and note the selection in `history`."""
    if best_state is not None:
        model.load_state_dict(best_state)
        history["selection"] = "val_miou"
    else:
        history["best_epoch"] = epochs
        history["selection"] = "last_epoch"
    return model.eval()


@torch.no_grad()
def predict_supervised(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 16
) -> torch.Tensor:
    """Class indices (N, H, W) long (CPU) for normalized images (N, C, H, W); model set to eval."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4:
        raise PairforgeError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    model.eval()
    device = next(model.parameters()).device
    stride = _network_stride(model)
    height, width = images.shape[-2:]
    outputs = []
    for first in range(0, images.shape[0], batch_size):
        batch, _ = _pad_to_multiple(images[first : first + batch_size], None, stride)
        logits = model(batch.to(device))[..., :height, :width]
        outputs.append(logits.argmax(dim=1).cpu())
    return torch.cat(outputs) if outputs else torch.zeros((0, height, width), dtype=torch.long)


def evaluate_supervised(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    batch_size: int = 16,
) -> tuple[float, np.ndarray]:
    """(mean IoU, per-class IoU (K,), NaN for absent classes) of `model` on labeled images."""
    prediction = predict_supervised(model, images, batch_size)
    return miou_from_confusion(confusion_matrix(prediction, masks, num_classes, IGNORE_INDEX))


SUPERVISED_WEIGHTS = "model.safetensors"
SUPERVISED_CONFIG = "supervised.json"


def save_supervised(
    model: torch.nn.Module, directory, *, arch: str, encoder: str, extra: dict | None = None
):
    """Write DIR/model.safetensors and DIR/supervised.json (architecture + `extra`)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    config = {
        "arch": arch,
        "encoder": encoder,
        "encoder_depth": getattr(model.encoder, "_depth", DEFAULT_ENCODER_DEPTH),
        "decoder_channels": list(DEFAULT_DECODER_CHANNELS),
        "in_channels": first_conv.in_channels,
        "num_classes": model.segmentation_head[0].out_channels,
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / SUPERVISED_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(directory / SUPERVISED_CONFIG, json.dumps(config, indent=2))
    return directory


def load_supervised(directory) -> tuple[torch.nn.Module, dict]:
    """Read a model written by `save_supervised`: (model in eval mode, config dict)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / SUPERVISED_CONFIG).exists():
        raise PairforgeError(
            f"{directory} has no {SUPERVISED_CONFIG}; train one with `pairforge seg baseline --out`"
        )
    config = json.loads((directory / SUPERVISED_CONFIG).read_text())
    model = build_supervised_model(
        config["in_channels"],
        config["num_classes"],
        config["arch"],
        config["encoder"],
        config["encoder_depth"],
        tuple(config["decoder_channels"]),
    )
    model.load_state_dict(load_file(str(directory / SUPERVISED_WEIGHTS)))
    return model.eval(), config
