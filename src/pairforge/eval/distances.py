"""Distances between feature sets: mean / covariance statistics, FID (Frechet) and KID."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pairforge.errors import PairforgeError


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
