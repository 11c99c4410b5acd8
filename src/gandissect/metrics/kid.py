"""Kernel distance (KID) between real and generated features: torchmetrics' ``KernelInceptionDistance`` on the same
features as the Frechet distance (any backbone), so it is the unbiased polynomial-kernel MMD^2 of Binkowski et al.,
averaged over random subsets. Unbiased, so usable at small n where the Frechet distance is biased upwards."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd


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


def kernel_distance_difference(real_features: torch.Tensor, fake_features: torch.Tensor, baseline: torch.Tensor,
                               subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """KID(fake) - KID(baseline) for two generators whose row i comes from the same latent: each subset draws the
    same real and generated rows for both, so their shared noise cancels. Returns the mean difference over the
    subsets and a normal interval for it. The subsets overlap, so their spread over sqrt(subsets) would understate
    the noise; the standard error used is that of one subset scaled to all n samples, sd * sqrt(size / n)."""
    n = min(len(fake_features), len(baseline))
    size = min(subset_size, len(real_features), n)
    gen = torch.Generator().manual_seed(seed)
    real, fake, base = real_features.double(), fake_features.double(), baseline.double()
    differences = []
    for _ in range(subsets):
        r = real[torch.randperm(len(real), generator=gen)[:size]]
        rows = torch.randperm(n, generator=gen)[:size]
        differences.append(float(poly_mmd(r, fake[rows]) - poly_mmd(r, base[rows])))
    d = torch.tensor(differences, dtype=torch.float64)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)))
    half = z * float(d.std()) * (size / n) ** 0.5 if len(d) > 1 else float("nan")
    return float(d.mean()), (float(d.mean()) - half, float(d.mean()) + half)
