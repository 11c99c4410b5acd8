"""Sampling noise of a Frechet distance: bootstrap intervals over the generated samples (the real side is the fixed
reference), for one generator and for the paired difference of two generators drawn from the same latents.

Each resample's distance uses tr sqrt(S_r S_g) = sum sqrt(eig(A S_g A)) with A = sqrt(S_r) computed once: the
same number as ``metrics.fid.frechet_distance`` (to float rounding), at a fraction of the cost of ``sqrtm``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, stats


class FrechetToReal:
    """The Frechet distance of feature sets to fixed real statistics (mu, sigma)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = np.asarray(mu, np.float64)
        self.sigma = np.asarray(sigma, np.float64)
        values, vectors = np.linalg.eigh(self.sigma)
        self.root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T  # sqrt(sigma), symmetric
        self.trace = float(np.trace(self.sigma))

    def __call__(self, features: np.ndarray) -> float:
        features = np.asarray(features, np.float64)
        mu = features.mean(axis=0)
        sigma = np.cov(features, rowvar=False)
        eig = linalg.eigvalsh(self.root @ sigma @ self.root)
        diff = mu - self.mu
        return float(diff @ diff + self.trace + np.trace(sigma) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def _interval(statistic, n: int, resamples: int, seed: int, level: float) -> tuple[float, float]:
    result = stats.bootstrap((np.arange(n),), lambda idx: statistic(idx.astype(int)), n_resamples=resamples,
                             vectorized=False, method="percentile", confidence_level=level,
                             random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def fd_interval(distance: FrechetToReal, features: np.ndarray, resamples: int = 200, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the distance of ``features`` (N, D), resampling the N samples."""
    return _interval(lambda idx: distance(features[idx]), len(features), resamples, seed, level)


def paired_difference_interval(distance: FrechetToReal, features: np.ndarray, baseline: np.ndarray,
                               resamples: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Interval of distance(features) - distance(baseline), where row i of both comes from the same latent: each
    resample draws the same latents for both, so the noise they share cancels."""
    if features.shape != baseline.shape:
        raise ValueError(f"paired feature sets differ in shape: {features.shape} vs {baseline.shape}")
    return _interval(lambda idx: distance(features[idx]) - distance(baseline[idx]), len(features), resamples,
                     seed, level)
