"""Kernel distance (KID) between real and generated features: torchmetrics' ``KernelInceptionDistance`` on the same
features as the Frechet distance (any backbone), so it is the unbiased polynomial-kernel MMD^2 of Binkowski et al.,
averaged over random subsets. Unbiased, so usable at small n where the Frechet distance is biased upwards."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance


def kernel_distance(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std over subsets) of KID between two (N, D) feature sets. The subsets are drawn from a generator
    seeded by ``seed``, so the same features give the same number in any process state."""
    size = min(subset_size, len(real_features), len(fake_features))
    with warnings.catch_warnings():  # it warns that it keeps every feature: that is what we hand it
        warnings.simplefilter("ignore", UserWarning)
        # sync_on_compute=False: the features are all here; under ddp one process computes this alone
        metric = KernelInceptionDistance(feature=nn.Identity(), subsets=subsets, subset_size=size,
                                         sync_on_compute=False)
    metric.update(real_features.double(), real=True)
    metric.update(fake_features.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws its subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
