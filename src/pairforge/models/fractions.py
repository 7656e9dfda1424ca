"""Class-fraction conditioning of a diffusers UNet2DModel: a small embedding added to the time
embedding, with an exact null condition (the plain UNet2DModel) for classifier-free guidance.

The condition of a sample is a vector (K + 1,): the K class fractions (summing to 1) and a keep
flag in {0, 1}. The embedding (an MLP to the U-Net's time-embedding width) is multiplied by the
keep flag, so the null condition (keep 0, e.g. all zeros) adds exactly zero: the conditioned
model's null prediction is bit for bit that of its inner UNet2DModel called without a condition.
On disk the inner U-Net is a plain UNet2DModel folder (config.json + safetensors, so diffusers
and DDPMPipeline read it as the null-condition, i.e. unconditional, model) and the embedding sits
next to it: fraction_embedding.json + fraction_embedding.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pairforge.errors import PairforgeError

EMBEDDING_CONFIG = "fraction_embedding.json"
EMBEDDING_WEIGHTS = "fraction_embedding.safetensors"


def mask_fractions(mask: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample class fractions of (B, H, W) class-index masks.

    Pixels outside 0..K-1 (IGNORE_INDEX, unlabeled) are excluded from both counts and total.
    Returns (fractions (B, K) float32 summing to 1 per labeled sample, zeros for a sample
    without labeled pixels; labeled (B,) bool: the sample has at least one labeled pixel).
    """
    mask = mask.long()
    valid = (mask >= 0) & (mask < num_classes)
    onehot = torch.nn.functional.one_hot(torch.where(valid, mask, 0), num_classes)
    counts = (onehot * valid.unsqueeze(-1)).flatten(1, -2).sum(dim=1).float()  # (B, K)
    total = counts.sum(dim=1, keepdim=True)
    labeled = total[:, 0] > 0
    return counts / total.clamp(min=1), labeled


def fraction_condition(fractions: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The model condition (B, K + 1) = cat(fractions * keep, keep) from fractions (B, K) and
    keep (B,) bool / {0, 1} (None: keep all); a dropped row is all zeros (the null condition)."""
    keep_f = torch.ones(fractions.shape[0]) if keep is None else keep.float()
    keep_f = keep_f.to(fractions.device, fractions.dtype)
    return torch.cat([fractions * keep_f[:, None], keep_f[:, None]], dim=1)


class FractionEmbedding(torch.nn.Module):
    """(B, K + 1) condition -> (B, width) time-embedding offset; zero for keep flag 0."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes, self.width = int(num_classes), int(width)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_classes + 1, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
        )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.net(condition) * condition[:, -1:]


class FractionConditionedUNet(torch.nn.Module):
    """A UNet2DModel conditioned on class fractions: model(sample, t, fractions=None).sample.

    fractions: (B, K + 1) conditions (`fraction_condition`), or None = the null condition for
    every sample (so code that calls model(x_t, t) samples unconditionally, as from a plain
    UNet2DModel). drop_prob: the training drop rate of the condition (recorded; 0 means the null
    condition was never trained). `config` is the inner U-Net's (block_out_channels, ...).
    """

    def __init__(self, unet, num_classes: int, drop_prob: float = 0.1):
        super().__init__()
        if unet.config.class_embed_type is not None or unet.config.num_class_embeds is not None:
            raise PairforgeError(
                "fraction conditioning needs a UNet2DModel without its own class embedding "
                f"(class_embed_type={unet.config.class_embed_type!r}); build it from a preset."
            )
        if num_classes < 2:
            raise PairforgeError(
                f"fraction conditioning needs >= 2 mask classes, got {num_classes}; use a "
                "labeled dataset or set model.fraction_conditioning=false."
            )
        self.unet = unet
        # Identity holds no weights and is not in the U-Net's config: the saved U-Net stays a
        # plain UNet2DModel; here it lets forward() add our embedding to the time embedding.
        self.unet.class_embedding = torch.nn.Identity()
        width = unet.time_embedding.linear_2.out_features
        self.embedding = FractionEmbedding(num_classes, width)
        self.num_classes, self.drop_prob = int(num_classes), float(drop_prob)

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def forward(self, sample, timestep, fractions: torch.Tensor | None = None, return_dict=True):
        batch = sample.shape[0]
        if fractions is None:
            offset = torch.zeros(batch, self.embedding.width, device=sample.device)
        else:
            if fractions.ndim != 2 or fractions.shape != (batch, self.num_classes + 1):
                raise PairforgeError(
                    f"FractionConditionedUNet: fractions shape {tuple(fractions.shape)} does not "
                    f"fit sample {tuple(sample.shape)}; pass (B, {self.num_classes + 1}) = "
                    "fraction_condition(fractions (B, K), keep (B,))."
                )
            offset = self.embedding(fractions.to(sample.device, torch.float32))
        return self.unet(sample, timestep, class_labels=offset, return_dict=return_dict)

    def embedding_config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "width": self.embedding.width,
            "drop_prob": self.drop_prob,
            "condition": "cat(fractions * keep, keep), (K + 1,)",
        }

    def save_pretrained(self, directory, safe_serialization: bool = True, **kwargs) -> None:
        """The inner UNet2DModel's files, then fraction_embedding.json / .safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.unet.save_pretrained(directory, safe_serialization=True, **kwargs)
        state = {k: v.detach().contiguous() for k, v in self.embedding.state_dict().items()}
        save_file(state, str(directory / EMBEDDING_WEIGHTS))
        (directory / EMBEDDING_CONFIG).write_text(json.dumps(self.embedding_config(), indent=2))

    @classmethod
    def from_pretrained(cls, directory) -> FractionConditionedUNet:
        from diffusers import UNet2DModel
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            config = json.loads((directory / EMBEDDING_CONFIG).read_text())
            state = load_file(str(directory / EMBEDDING_WEIGHTS))
        except Exception as err:  # OSError, JSON errors, SafetensorError of a damaged file
            raise PairforgeError(
                f"{directory}: the fraction embedding ({EMBEDDING_CONFIG}, {EMBEDDING_WEIGHTS}) "
                f"cannot be read ({err}); rebuild RUN/model by rerunning the training command."
            ) from None
        model = cls(UNet2DModel.from_pretrained(directory), config["num_classes"])
        model.drop_prob = float(config.get("drop_prob", 0.0))
        model.embedding.load_state_dict(state)
        return model.eval()


def is_fraction_folder(directory) -> bool:
    """Whether a saved model folder holds a fraction embedding next to its U-Net."""
    return (Path(directory) / EMBEDDING_CONFIG).is_file()


def build_fraction_unet(unet, num_classes: int, drop_prob: float) -> FractionConditionedUNet:
    """A freshly initialized conditioned model around a freshly built UNet2DModel."""
    return FractionConditionedUNet(unet, num_classes, drop_prob)
