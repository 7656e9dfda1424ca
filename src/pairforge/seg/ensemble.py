"""Ensemble of pixel MLPs on diffusion features: training, prediction, uncertainty, safetensors I/O.

Architecture and training follow Baranchuk et al. (ICLR 2022): each member is
Linear-ReLU-BatchNorm twice then a Linear classifier (hidden widths 256/128 for >= 30 classes,
else 128/32), trained with Adam (lr 1e-3) on per-pixel cross-entropy. Early stopping uses
held-out labeled IMAGES (pixels of one image never sit on both sides of the split).

Combining members: "mean" (default) = argmax of the mean softmax; "vote" = majority vote of
the members' argmax labels, as the reference implementation does (`torch.mode` there; ties
here go to the class with the higher mean softmax instead of the lower index). Mean softmax is
the default because it uses each member's confidence and never needs a tie rule (with 10
members two-class ties are common), and because it measured better: on the built-in grains
(bench/bench_features.py, 8 labeled tiles, 10 members, 5 seeds, same ensembles) vote - mean
test mIoU was -0.24 [-0.41, -0.06] points (paired 95 % t interval) at the default timesteps,
and below 0 at the two other noise-level sets too. Vote is one flag away (`--combine vote`).

Uncertainty per pixel, from the members' softmaxes p_1..p_M (nats):
  "js" (default) = Jensen-Shannon divergence of the members = mutual information between the
      label and the member: H(mean_m p_m) - mean_m H(p_m), in [0, log M] (0 when all members
      agree exactly; log 2 for two confident members that disagree). This is the score of the
      reference's DatasetDDPM filtering (per-image score = mean of its top 10 % pixels).
  "entropy" = H(mean_m p_m), in [0, log K]: high also where every member is unsure the same way.
  "disagreement" = fraction of members whose argmax differs from the ensemble label.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from pairforge.core.metrics import confusion_matrix, miou_from_confusion
from pairforge.core.seeds import ensemble_member_seed
from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, atomic_write_text
from pairforge.seg.features import PixelFeatures

WEIGHTS_FILE = "ensemble.safetensors"
CONFIG_FILE = "head.json"
COMBINE_MODES = ("mean", "vote")
UNCERTAINTY_KINDS = ("js", "entropy", "disagreement")
DEFAULT_UNCERTAINTY = "js"


@dataclass(frozen=True)
class EnsembleConfig:
    """Shape and training settings of a pixel-MLP ensemble.

    feature_dim: D, input width. num_classes: K. num_models: ensemble size M.
    hidden: hidden widths; None = (256, 128) if K >= 30 else (128, 32).
    """

    feature_dim: int
    num_classes: int
    num_models: int = 10
    hidden: tuple[int, ...] | None = None

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        if self.hidden is not None:
            return tuple(self.hidden)
        return (256, 128) if self.num_classes >= 30 else (128, 32)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden_widths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleConfig:
        return cls(
            feature_dim=int(data["feature_dim"]),
            num_classes=int(data["num_classes"]),
            num_models=int(data.get("num_models", 10)),
            hidden=tuple(data["hidden"]) if data.get("hidden") else None,
        )


def pixel_mlp(feature_dim: int, hidden: tuple[int, ...], num_classes: int) -> torch.nn.Sequential:
    """(P, D) -> (P, K) logits: [Linear, ReLU, BatchNorm1d] per hidden width, then Linear."""
    layers: list[torch.nn.Module] = []
    width_in = feature_dim
    for width in hidden:
        layers += [torch.nn.Linear(width_in, width), torch.nn.ReLU(), torch.nn.BatchNorm1d(width)]
        width_in = width
    layers.append(torch.nn.Linear(width_in, num_classes))
    return torch.nn.Sequential(*layers)


def check_uncertainty_kind(kind: str, flag: str = "uncertainty") -> str:
    """`kind` if it is one of UNCERTAINTY_KINDS, else a PairforgeError naming `flag`."""
    if kind not in UNCERTAINTY_KINDS:
        raise PairforgeError(
            f"{flag} {kind!r} is unknown; use one of {', '.join(UNCERTAINTY_KINDS)} "
            f"(default {DEFAULT_UNCERTAINTY})"
        )
    return kind


def entropy_of(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats of probabilities along `dim` (0 log 0 = 0)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=dim)


@dataclass
class PixelPrediction:
    """Ensemble output for P pixels (or (B, H, W) maps when reshaped by `segment`).

    labels: long class indices. mean_probs: float (..., K) mean softmax (only kept on request).
    entropy: float, entropy of the mean softmax in nats, in [0, log K].
    disagreement: float in [0, 1 - 1/K']: fraction of members whose vote differs from the
        ensemble's label.
    member_entropy: float, mean over members of each member's softmax entropy (nats); with
        `entropy` it gives the Jensen-Shannon disagreement `js`. None only for predictions
        built by hand.
    """

    labels: torch.Tensor
    entropy: torch.Tensor
    disagreement: torch.Tensor
    mean_probs: torch.Tensor | None = None
    member_entropy: torch.Tensor | None = None

    @property
    def js(self) -> torch.Tensor:
        """Jensen-Shannon disagreement H(mean p) - mean H(p) (nats, in [0, log M])."""
        if self.member_entropy is None:
            raise PairforgeError("this prediction has no member entropies; JS is unavailable")
        # Clamp float rounding: identical members give -1e-8, never a negative divergence.
        return (self.entropy - self.member_entropy).clamp_min(0.0)

    def uncertainty(self, kind: str = DEFAULT_UNCERTAINTY) -> torch.Tensor:
        """Per-pixel uncertainty of `kind` ("js", "entropy" or "disagreement")."""
        check_uncertainty_kind(kind)
        if kind == "js":
            return self.js
        return self.entropy if kind == "entropy" else self.disagreement


class PixelEnsemble(torch.nn.Module):
    """M pixel MLPs; `predict` combines them by mean softmax (default) or majority vote
    (module docstring: why mean is the default)."""

    def __init__(self, config: EnsembleConfig):
        super().__init__()
        self.config = config
        self.members = torch.nn.ModuleList(
            pixel_mlp(config.feature_dim, config.hidden_widths, config.num_classes)
            for _ in range(config.num_models)
        )

    @torch.no_grad()
    def predict(
        self,
        features: torch.Tensor,
        combine: str = "mean",
        chunk_pixels: int = 65536,
        keep_probs: bool = False,
    ) -> PixelPrediction:
        """Labels and uncertainties of pixel features (P, D) (any float dtype, CPU or device).

        combine: "mean" (default) = argmax of the mean softmax; "vote" = most member votes
        (Baranchuk et al.'s majority vote), ties broken by the mean softmax. Pixels are
        processed in chunks of `chunk_pixels` to bound memory.
        """
        check_combine(combine)
        features = torch.as_tensor(features)
        if features.ndim != 2 or features.shape[1] != self.config.feature_dim:
            raise PairforgeError(
                f"pixel features must be (P, {self.config.feature_dim}); got "
                f"{tuple(features.shape)} (were they extracted with the head's feature settings?)"
            )
        self.eval()
        device = next(self.parameters()).device
        outputs: dict[str, list[torch.Tensor]] = {
            "labels": [], "entropy": [], "dis": [], "p": [], "member_entropy": []
        }  # fmt: skip
        for start in range(0, features.shape[0], chunk_pixels):
            chunk = features[start : start + chunk_pixels].to(device, torch.float32)
            probs = torch.stack([member(chunk).softmax(dim=-1) for member in self.members])
            mean_probs = probs.mean(dim=0)  # (P, K)
            votes = probs.argmax(dim=-1)  # (M, P)
            if combine == "mean":
                labels = mean_probs.argmax(dim=-1)
            else:
                counts = F.one_hot(votes, self.config.num_classes).sum(dim=0).float()
                labels = (counts + mean_probs).argmax(dim=-1)  # mean prob < 1 breaks ties only
            entropy = entropy_of(mean_probs)
            disagreement = (votes != labels).float().mean(dim=0)
            outputs["member_entropy"].append(entropy_of(probs).mean(dim=0).cpu())
            outputs["labels"].append(labels.cpu())
            outputs["entropy"].append(entropy.cpu())
            outputs["dis"].append(disagreement.cpu())
            if keep_probs:
                outputs["p"].append(mean_probs.cpu())
        if not outputs["labels"]:
            empty = torch.zeros(0)
            return PixelPrediction(empty.long(), empty, empty, member_entropy=empty)
        return PixelPrediction(
            labels=torch.cat(outputs["labels"]),
            entropy=torch.cat(outputs["entropy"]),
            disagreement=torch.cat(outputs["dis"]),
            mean_probs=torch.cat(outputs["p"]) if keep_probs else None,
            member_entropy=torch.cat(outputs["member_entropy"]),
        )

    def segment(
        self, feature_maps: torch.Tensor, combine: str = "mean", keep_probs: bool = False
    ) -> PixelPrediction:
        """Per-pixel prediction of feature maps (B, D, H, W): fields (B, H, W), probs (B, K, H, W)."""
        batch, dim, height, width = feature_maps.shape
        flat = feature_maps.permute(0, 2, 3, 1).reshape(-1, dim)
        result = self.predict(flat, combine=combine, keep_probs=keep_probs)
        probs = None
        if keep_probs:
            probs = result.mean_probs.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        return PixelPrediction(
            labels=result.labels.reshape(batch, height, width),
            entropy=result.entropy.reshape(batch, height, width),
            disagreement=result.disagreement.reshape(batch, height, width),
            mean_probs=probs,
            member_entropy=result.member_entropy.reshape(batch, height, width),
        )

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write DIR/ensemble.safetensors (weights) and DIR/head.json (config + `extra`)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()
        }
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        meta = {"format": "pairforge-pixel-ensemble/1", "ensemble": self.config.to_dict()}
        meta.update(extra or {})
        atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> tuple[PixelEnsemble, dict[str, Any]]:
        """Read a head written by `save`: (ensemble in eval mode, the full head.json dict)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.exists() or not weights_path.exists():
            raise PairforgeError(
                f"{directory} is not a segmentation head (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "create one with `pairforge seg fit`"
            )
        meta = json.loads(config_path.read_text())
        ensemble = cls(EnsembleConfig.from_dict(meta["ensemble"]))
        state = load_file(str(weights_path))
        expected = ensemble.state_dict()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if missing or unexpected:
            raise PairforgeError(
                f"{weights_path}: weights do not match {config_path} (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); the two files come from different heads"
            )
        ensemble.load_state_dict(state)
        return ensemble.eval(), meta


def check_combine(combine: str, flag: str = "combine") -> str:
    """`combine` if it is one of COMBINE_MODES, else a PairforgeError naming `flag`."""
    if combine not in COMBINE_MODES:
        raise PairforgeError(
            f"{flag}={combine!r} is unknown; use 'mean' (mean softmax, default) or 'vote' "
            "(majority vote)"
        )
    return combine


def image_scores(uncertainty: torch.Tensor, top_fraction: float = 0.1) -> torch.Tensor:
    """Per-image uncertainty (B,) = mean of each image's top `top_fraction` pixels of (B, H, W).

    With JS maps (the default uncertainty) this is the DatasetDDPM per-image score.
    """
    flat = uncertainty.reshape(uncertainty.shape[0], -1).float()
    count = max(1, math.ceil(top_fraction * flat.shape[1]))
    return flat.topk(count, dim=1).values.mean(dim=1)


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
    val_x = _rows(val_features, val_rows).to(device) if has_val else None
    val_y = val_labels[np.sort(val_rows)] if has_val else None
    ensemble.to(device)

    data = MemberData(pixels.features, labels_all, train_rows, val_x, val_y, num_classes, weights)
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
    the training rows, the validation pixels (val_x (V, D) on the device, val_y (V,); None: no
    early stopping), the class count and the class weights of the loss (None: unweighted)."""

    features: Any
    labels: np.ndarray
    train_rows: np.ndarray
    val_x: torch.Tensor | None
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
    features, labels, train_rows, val_x, val_y, num_classes, weights = data
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
        if val_x is None:
            continue
        member.eval()
        with torch.no_grad():
            prediction = member(val_x).argmax(dim=-1).cpu()
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
