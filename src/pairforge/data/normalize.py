"""Per-channel linear maps between physical units and the model's [-1, 1] range."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pairforge.errors import PairforgeError


class ChannelNormalizer:
    """Maps channel c linearly so that `low[c]` -> -1 and `high[c]` -> +1.

    The map is exact and invertible (no clipping), so values outside the fitted percentiles
    land slightly outside [-1, 1] and come back unchanged. Works on numpy arrays and torch
    tensors whose channel axis is -3, i.e. (C, H, W) or (B, C, H, W).
    """

    def __init__(self, low: Iterable[float], high: Iterable[float]):
        self.low = np.asarray(list(low), dtype=np.float64)
        self.high = np.asarray(list(high), dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise PairforgeError(
                f"normalization needs one low and one high value per channel, got "
                f"{self.low.tolist()} and {self.high.tolist()}"
            )
        bad = np.flatnonzero(~(self.high > self.low))
        if bad.size:
            c = int(bad[0])
            raise PairforgeError(
                f"normalization of channel {c}: high ({self.high[c]}) must exceed low "
                f"({self.low[c]}); a constant channel cannot be normalized, drop it or set "
                "normalization explicitly in dataset.yaml"
            )

    @property
    def num_channels(self) -> int:
        return int(self.low.size)

    @classmethod
    def fit(
        cls,
        arrays: Iterable[np.ndarray],
        low_pct: float = 0.5,
        high_pct: float = 99.5,
        max_values_per_array: int = 1_000_000,
        seed: int = 0,
        names: list[str] | None = None,
    ) -> ChannelNormalizer:
        """Robust per-channel percentiles over (C, H, W) arrays (subsampled for speed, seeded).

        Non-finite values are left out; a channel without any finite value raises
        PairforgeError (named by `names[c]` if given, else by its index).
        """
        rng = np.random.default_rng(seed)
        per_channel: list[list[np.ndarray]] | None = None
        for arr in arrays:
            flat = np.asarray(arr, dtype=np.float32).reshape(arr.shape[0], -1)
            if flat.shape[1] > max_values_per_array:
                idx = rng.choice(flat.shape[1], max_values_per_array, replace=False)
                flat = flat[:, idx]
            if per_channel is None:
                per_channel = [[] for _ in range(flat.shape[0])]
            for c in range(flat.shape[0]):
                per_channel[c].append(flat[c][np.isfinite(flat[c])])
        if per_channel is None:
            raise PairforgeError("cannot fit a normalization on zero images")
        low, high = [], []
        for c, values in enumerate(per_channel):
            v = np.concatenate(values)
            if v.size == 0:  # np.percentile of nothing raises IndexError
                name = repr(names[c]) if names and c < len(names) else str(c)
                raise PairforgeError(
                    f"cannot fit a normalization: channel {name} has no finite value (all NaN or "
                    "inf); fill the images or set normalization explicitly in dataset.yaml"
                )
            lo, hi = np.percentile(v, [low_pct, high_pct])
            if not hi > lo:  # near-constant channel: widen around the value
                lo, hi = float(v.min()), float(v.max())
                if not hi > lo:
                    lo, hi = lo - 0.5, lo + 0.5
            low.append(float(lo))
            high.append(float(hi))
        return cls(low, high)

    def _scale_offset(self, x):
        shape = (-1, 1, 1)
        scale = 2.0 / (self.high - self.low)
        offset = -1.0 - self.low * scale
        if isinstance(x, np.ndarray):
            return scale.reshape(shape), offset.reshape(shape)
        import torch

        as_t = lambda a: torch.as_tensor(a.reshape(shape), dtype=x.dtype, device=x.device)  # noqa: E731
        return as_t(scale), as_t(offset)

    def _check(self, x) -> None:
        if x.shape[-3] != self.num_channels:
            raise PairforgeError(
                f"normalizer has {self.num_channels} channels but the data has {x.shape[-3]} "
                f"(shape {tuple(x.shape)})"
            )

    def encode(self, x):
        """Physical units -> model range; same type, dtype float32/64 preserved for numpy."""
        self._check(x)
        scale, offset = self._scale_offset(x)
        if isinstance(x, np.ndarray):
            return (x.astype(np.float64) * scale + offset).astype(np.float32)
        return x * scale + offset

    def decode(self, y):
        """Model range -> physical units."""
        self._check(y)
        scale, offset = self._scale_offset(y)
        if isinstance(y, np.ndarray):
            return ((y.astype(np.float64) - offset) / scale).astype(np.float32)
        return (y - offset) / scale

    def to_dict(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ChannelNormalizer:
        return cls(d["low"], d["high"])

    def __repr__(self) -> str:
        return f"ChannelNormalizer(low={self.low.tolist()}, high={self.high.tolist()})"
