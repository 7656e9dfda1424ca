"""Training the pixel-MLP ensemble: members on per-pixel cross-entropy with early stopping on
held-out labeled images.

Architecture and training follow Baranchuk et al. (ICLR 2022): each member
(`pairforge.seg.ensemble.pixel_mlp`) is trained with Adam (lr 1e-3) on per-pixel cross-entropy.
Early stopping uses held-out labeled IMAGES (pixels of one image never sit on both sides of the
split).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from pairforge.core.metrics import confusion_matrix, miou_from_confusion
from pairforge.core.seeds import ensemble_member_seed
from pairforge.errors import PairforgeError
from pairforge.seg.ensemble import EnsembleConfig, PixelEnsemble, pixel_mlp
from pairforge.seg.pixels import PixelFeatures


def split_by_image(
    image_index: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val): whole images go to val (at least one if there are >= 2)."""
    images = np.unique(image_index)
    num_val = int(round(val_fraction * len(images)))
    num_val = min(max(num_val, 1 if val_fraction > 0 else 0), len(images) - 1)
    if num_val <= 0:
        return np.arange(len(image_index)), np.zeros(0, dtype=np.int64)
    val_images = np.random.default_rng(seed).choice(images, size=num_val, replace=False)
    is_val = np.isin(image_index, val_images)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over present classes (absent classes weight 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _rows(features: np.ndarray, index: np.ndarray) -> torch.Tensor:
    # Sorted reads are sequential in a memmap; the order inside a batch does not matter.
    return torch.from_numpy(np.asarray(features[np.sort(index)], dtype=np.float32))


# Validation pixels are scored this many at a time, so early stopping holds one float32 chunk
# (16384 x 2688 features: 176 MiB) instead of every validation pixel in float32 (a base U-Net's
# 12 select tiles at 128 px: 2 GiB).
VAL_CHUNK_ROWS = 16384


@torch.no_grad()
def _predict_rows(member, features, rows: np.ndarray, device: str) -> torch.Tensor:
    """Class index of `features[rows]` (rows sorted), scored in float32 chunks."""
    chunks = [
        member(_rows(features, rows[first : first + VAL_CHUNK_ROWS]).to(device)).argmax(-1).cpu()
        for first in range(0, len(rows), VAL_CHUNK_ROWS)
    ]
    return torch.cat(chunks)


class EnsembleSettings(BaseModel):
    """How the pixel-MLP ensemble is trained.

    num_models: members M; hidden: MLP widths (None: 256/128 for >= 30 classes, else 128/32).
    val_fraction: share of the training images held out for early stopping when no validation
        pixels are given (split by image, seeded); with a single image or 0 there is no early
        stopping and every member trains max_epochs.
    max_epochs / patience: an epoch is one pass over the training pixels; training stops after
        `patience` epochs without a better validation mIoU and keeps the best epoch.
    batch_size / lr: pixels per Adam step, learning rate.
    class_balance: weight the loss by inverse class frequency.
    seed: member m uses `core.seeds.ensemble_member_seed(seed, m)` (seed * 1000 + m) for its
        initialization and shuffling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_models: int = 10
    hidden: tuple[int, ...] | None = None
    val_fraction: float = 0.2
    max_epochs: int = 20
    patience: int = 3
    batch_size: int = 512
    lr: float = 1e-3
    class_balance: bool = False
    seed: int = 0


def train_ensemble(
    pixels: PixelFeatures,
    num_classes: int,
    settings: EnsembleSettings | None = None,
    *,
    val_pixels: PixelFeatures | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[PixelEnsemble, dict[str, Any]]:
    """Train M pixel MLPs with early stopping on held-out labeled images.

    Args:
        pixels: training pixels (features (P, D) float16, labels, image_index).
        settings: EnsembleSettings (None: the defaults).
        val_pixels: held-out images' pixels for early stopping. None: settings.val_fraction of
            the images in `pixels` are held out.

    Returns:
        (ensemble in eval mode, history) with history["members"][m] = {"best_epoch",
        "best_val_miou", "epochs_run", "seconds"}, history["val_images"], history["seconds"].
    """
    settings = settings or EnsembleSettings()
    num_models, hidden, seed = settings.num_models, settings.hidden, settings.seed
    labels_all = np.asarray(pixels.labels)
    if labels_all.size == 0:
        raise PairforgeError("no labeled pixels to train on; check the masks (all ignore?)")
    if labels_all.min() < 0 or labels_all.max() >= num_classes:
        raise PairforgeError(
            f"pixel labels span {labels_all.min()}..{labels_all.max()} but num_classes="
            f"{num_classes}; labels must be 0..{num_classes - 1}"
        )
    if val_pixels is not None:
        train_rows = np.arange(labels_all.size)
        val_features, val_labels = val_pixels.features, np.asarray(val_pixels.labels)
        val_images = sorted(np.unique(val_pixels.image_index).tolist())
        val_rows = np.arange(val_labels.size)
    else:
        train_rows, val_rows = split_by_image(pixels.image_index, settings.val_fraction, seed)
        val_features, val_labels = pixels.features, labels_all
        val_images = sorted(np.unique(pixels.image_index[val_rows]).tolist())
    has_val = val_rows.size > 0
    config = EnsembleConfig(pixels.features.shape[1], num_classes, num_models, hidden)
    ensemble = PixelEnsemble(config)
    weights = (
        _class_weights(labels_all[train_rows], num_classes) if settings.class_balance else None
    )
    if weights is not None:
        weights = weights.to(device)
    val_rows = np.sort(val_rows) if has_val else None
    val_y = val_labels[val_rows] if has_val else None
    ensemble.to(device)

    data = MemberData(
        pixels.features, labels_all, train_rows, val_features, val_rows, val_y, num_classes,
        weights,
    )  # fmt: skip
    training = MemberTraining(
        max_epochs=settings.max_epochs,
        patience=settings.patience,
        batch_size=settings.batch_size,
        lr=settings.lr,
    )
    history: dict[str, Any] = {"members": [], "val_images": val_images}
    start_all = time.perf_counter()
    members = range(num_models)
    if progress:
        from tqdm.auto import tqdm

        members = tqdm(members, desc="pixel MLPs", unit="model")
    for m in members:
        member_seed = ensemble_member_seed(seed, m)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(member_seed)
            ensemble.members[m] = pixel_mlp(config.feature_dim, config.hidden_widths, num_classes)
        member = ensemble.members[m].to(device)
        record = _train_member(member, data, training, np.random.default_rng(member_seed), device)
        history["members"].append(record)
    history["seconds"] = time.perf_counter() - start_all
    return ensemble.eval(), history


class MemberData(NamedTuple):
    """What every ensemble member trains on: pixel features (P, D) float16 and labels (P,),
    the training rows, the validation pixels (rows `val_rows` (V,), sorted, of `val_features`
    (float16, in RAM or memory-mapped), labels val_y (V,); None: no early stopping), the class
    count and the class weights of the loss (None: unweighted)."""

    features: Any
    labels: np.ndarray
    train_rows: np.ndarray
    val_features: Any
    val_rows: np.ndarray | None
    val_y: np.ndarray | None
    num_classes: int
    weights: torch.Tensor | None


class MemberTraining(BaseModel):
    """How one member trains: epochs over the training pixels, early-stopping patience (epochs
    without a better validation mIoU), pixel batch size and Adam learning rate."""

    model_config = ConfigDict(frozen=True)

    max_epochs: int
    patience: int
    batch_size: int
    lr: float


def _train_member(
    member: torch.nn.Module,
    data: MemberData,
    training: MemberTraining,
    rng: np.random.Generator,
    device: str,
) -> dict[str, Any]:
    """One MLP: Adam on shuffled pixel batches; keep the best validation-mIoU epoch."""
    features, labels, train_rows, val_features, val_rows, val_y, num_classes, weights = data
    max_epochs, patience = training.max_epochs, training.patience
    batch_size, lr = training.batch_size, training.lr
    optimizer = torch.optim.Adam(member.parameters(), lr=lr)
    start = time.perf_counter()
    best = {"best_epoch": 0, "best_val_miou": None, "state": None}
    epochs_without_gain = 0
    epochs_run = 0
    for epoch in range(1, max_epochs + 1):
        epochs_run = epoch
        member.train()
        order = rng.permutation(train_rows)
        for first in range(0, len(order), batch_size):
            index = order[first : first + batch_size]
            if len(index) < 2:  # BatchNorm needs two samples in training mode
                continue
            index = np.sort(index)
            x = torch.from_numpy(np.asarray(features[index], dtype=np.float32)).to(device)
            y = torch.from_numpy(labels[index]).to(device)
            loss = F.cross_entropy(member(x), y, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if val_rows is None:
            continue
        member.eval()
        prediction = _predict_rows(member, val_features, val_rows, device)
        score = miou_from_confusion(confusion_matrix(prediction, val_y, num_classes, None))[0]
        if best["best_val_miou"] is None or score > best["best_val_miou"]:
            best.update(best_epoch=epoch, best_val_miou=score)
            best["state"] = {k: v.detach().clone() for k, v in member.state_dict().items()}
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= patience:
                break
    if best["state"] is not None:
        member.load_state_dict(best["state"])
    else:
        best["best_epoch"] = epochs_run
    member.eval()
    return {
        "best_epoch": best["best_epoch"],
        "best_val_miou": best["best_val_miou"],
        "epochs_run": epochs_run,
        "seconds": time.perf_counter() - start,
    }
