"""Features kept, not only summed: a metric that stores each sample's feature vector with its latent (or scene)
index, gathered across processes and returned in index order. Small at our scale (10,000 x 128 floats is 5 MB),
and it lets the same features serve the Frechet distance, its bootstrap interval, KID and precision/recall, and
pair two generators' samples drawn from the same latents."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, D) features as they are; (N, D, h, w) maps averaged over space (as pytorch-fid does)."""
    return F.adaptive_avg_pool2d(features, 1).flatten(1) if features.ndim == 4 else features


class FeatureBank(Metric):
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("index", [], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, index: torch.Tensor) -> None:
        self.features.append(pooled(features).detach().float())
        self.index.append(index.detach().to(self.device).long())

    def compute(self) -> torch.Tensor:
        """(N, D) features of every process, sorted by index (an index fed twice is kept once)."""
        if isinstance(self.features, list) and not self.features:  # synced states arrive as one tensor
            return torch.zeros(0, 0)
        features, index = dim_zero_cat(self.features), dim_zero_cat(self.index)
        order = torch.argsort(index, stable=True)
        index, features = index[order], features[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        return features[first].cpu()


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features, in float64 (pytorch-fid's statistics)."""
    x = np.asarray(features, np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)
