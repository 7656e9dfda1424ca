"""Ensemble of pixel MLPs on diffusion features: members, combining, uncertainty, safetensors I/O.

Architecture follows Baranchuk et al. (ICLR 2022): each member is Linear-ReLU-BatchNorm twice
then a Linear classifier (hidden widths 256/128 for >= 30 classes, else 128/32); training with
early stopping on held-out images is `pairforge.seg.ensemble_training.train_ensemble`.

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pairforge.errors import PairforgeError
from pairforge.io import atomic_write, atomic_write_text

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


class UncertaintyMaps:
    """Per-pixel uncertainties of an ensemble result that holds `entropy` (of the mean softmax),
    `disagreement` and `member_entropy` (mean member entropy) maps: PixelPrediction and
    `pairforge.seg.sliding.SlidingResult`."""

    entropy: torch.Tensor
    disagreement: torch.Tensor
    member_entropy: torch.Tensor | None

    @property
    def js(self) -> torch.Tensor:
        """Jensen-Shannon disagreement H(mean p) - mean H(p) (nats, in [0, log M])."""
        if self.member_entropy is None:
            raise PairforgeError("this prediction has no member entropies; JS is unavailable")
        # Clamp float rounding: identical members give -1e-8, never a negative divergence.
        return (self.entropy - self.member_entropy).clamp_min(0.0)

    def uncertainty(self, kind: str = DEFAULT_UNCERTAINTY) -> torch.Tensor:
        """Per-pixel uncertainty of `kind` ("js" default, "entropy" or "disagreement")."""
        check_uncertainty_kind(kind)
        if kind == "js":
            return self.js
        return self.entropy if kind == "entropy" else self.disagreement


@dataclass
class PixelPrediction(UncertaintyMaps):
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

    @classmethod
    def cat(cls, parts: list[PixelPrediction]) -> PixelPrediction:
        """Predictions of consecutive chunks (pixels or images) joined along the first axis;
        a field missing (None) in any part is None."""

        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(part, name) for part in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return cls(**{f.name: joined(f.name) for f in fields(cls)})


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
        parts = []
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
            parts.append(
                PixelPrediction(
                    labels=labels.cpu(),
                    entropy=entropy_of(mean_probs).cpu(),
                    disagreement=(votes != labels).float().mean(dim=0).cpu(),
                    mean_probs=mean_probs.cpu() if keep_probs else None,
                    member_entropy=entropy_of(probs).mean(dim=0).cpu(),
                )
            )
        if not parts:
            empty = torch.zeros(0)
            return PixelPrediction(empty.long(), empty, empty, member_entropy=empty)
        return PixelPrediction.cat(parts)

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
