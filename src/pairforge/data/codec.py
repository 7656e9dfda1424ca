"""MaskCodec: class-index masks <-> model channels in {-1, 1} (one-hot or analog bits)."""

from __future__ import annotations

import math
from typing import Any

from pairforge.errors import PairforgeError

# The class index of unlabeled pixels in every loaded or generated mask (never a real class).
IGNORE_INDEX = 255

CODEC_KINDS = ("onehot", "bits", "auto")
# "auto" uses one-hot up to this many classes and analog bits above (SatSynth-style).
AUTO_ONEHOT_MAX_CLASSES = 8


class MaskCodec:
    """Maps class indices 0..K-1 to `channels` model channels with values in {-1, 1} and back.

    kind "onehot": K channels, +1 on the class channel, -1 elsewhere; decoded by argmax.
    kind "bits":   ceil(log2 K) channels, channel b = +1 where bit b (least significant first)
                   of the class index is set; decoded by thresholding at 0, then clamped to K-1
                   so that every decoded value is a valid class index.
    kind "auto":   "onehot" for K <= 8 classes, "bits" above. `kind` holds the resolved kind.
    Decoding never rounds an averaged value into equal-width bins.
    """

    def __init__(self, num_classes: int, kind: str = "auto") -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise PairforgeError(
                f"MaskCodec: num_classes={num_classes!r} is invalid; a mask needs at least 2 "
                "classes (an integer >= 2)."
            )
        if kind not in CODEC_KINDS:
            raise PairforgeError(
                f"MaskCodec: kind={kind!r} is unknown; use one of {', '.join(CODEC_KINDS)}."
            )
        if kind == "auto":
            kind = "onehot" if num_classes <= AUTO_ONEHOT_MAX_CLASSES else "bits"
        self.num_classes = num_classes
        self.kind = kind
        self.channels = num_classes if kind == "onehot" else math.ceil(math.log2(num_classes))

    def __repr__(self) -> str:
        return f"MaskCodec(num_classes={self.num_classes}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MaskCodec)
            and other.num_classes == self.num_classes
            and other.kind == self.kind
        )

    def encode(self, mask):
        """(B, H, W) int class indices in [0, K) -> (B, channels, H, W) float32 in {-1, 1}.

        Raises PairforgeError if a value lies outside [0, K) (e.g. an ignore label such as 255):
        joint and mask models need fully labeled masks.
        """
        import torch

        mask = torch.as_tensor(mask)
        if mask.dtype.is_floating_point:
            raise PairforgeError(
                f"MaskCodec.encode: got a {mask.dtype} mask; pass integer class indices (long)."
            )
        mask = mask.long()
        if mask.numel() > 0:
            low, high = int(mask.min()), int(mask.max())
            if low < 0 or high >= self.num_classes:
                bad = low if low < 0 else high
                raise PairforgeError(
                    f"MaskCodec.encode: mask value {bad} is outside the class indices "
                    f"0..{self.num_classes - 1}; remove ignore/unlabeled pixels (or pick "
                    "fully labeled crops) before encoding."
                )
        if self.kind == "onehot":
            bits = torch.nn.functional.one_hot(mask, self.num_classes).movedim(-1, -3)
        else:
            powers = 2 ** torch.arange(self.channels, device=mask.device)
            bits = (mask.unsqueeze(-3) // powers.view(-1, 1, 1)) % 2
        return bits.float() * 2.0 - 1.0

    def decode(self, x):
        """(B, channels, H, W) float (any real values) -> (B, H, W) int64 class indices in [0, K)."""
        import torch

        x = torch.as_tensor(x)
        if x.shape[-3] != self.channels:
            raise PairforgeError(
                f"MaskCodec.decode: expected {self.channels} mask channels for {self!r}, got "
                f"shape {tuple(x.shape)}; pass only the mask channels (B, {self.channels}, H, W)."
            )
        if self.kind == "onehot":
            return x.argmax(dim=-3).long()
        powers = 2 ** torch.arange(self.channels, device=x.device)
        ids = ((x > 0).long() * powers.view(-1, 1, 1)).sum(dim=-3)
        return ids.clamp(max=self.num_classes - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, e.g. {"num_classes": 3, "kind": "onehot", "channels": 3}."""
        return {"num_classes": self.num_classes, "kind": self.kind, "channels": self.channels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskCodec:
        """Inverse of `to_dict`; checks the stored channel count if present."""
        try:
            codec = cls(int(d["num_classes"]), str(d.get("kind", "auto")))
        except (KeyError, TypeError, ValueError) as err:
            raise PairforgeError(
                f"MaskCodec.from_dict: {d!r} is not a codec description; expected "
                '{"num_classes": K, "kind": "onehot"|"bits"}.'
            ) from err
        if "channels" in d and int(d["channels"]) != codec.channels:
            raise PairforgeError(
                f"MaskCodec.from_dict: channels={d['channels']} does not match {codec!r} "
                f"({codec.channels} channels); the stored codec is inconsistent."
            )
        return codec
