"""Improved precision and recall of a generated distribution (Kynkaanniemi et al., NeurIPS 2019).

Each sample's neighbourhood is the ball reaching its k-th nearest neighbour (k = 3) among its own set. Precision is
the share of generated samples inside some real sample's ball (how much of what is generated looks real; artifacts
lower it); recall is the share of real samples inside some generated sample's ball (how much of the real variety is
covered). Distances are computed in chunks, so memory stays at chunk x N.
"""

from __future__ import annotations

import torch


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """(N,) distance of each sample to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for start in range(0, len(features), chunk):
        d = torch.cdist(features[start:start + chunk], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the smallest distance is the sample to itself
    return torch.cat(radii)


def covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Q,) bool: whether each query lies within some centre's ball."""
    inside = []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     real_radii: torch.Tensor | None = None) -> dict:
    """``{"precision", "recall", "k"}`` of generated vs real (N, D) features (pass ``real_radii`` to reuse them)."""
    real, fake = real_features.double(), fake_features.double()
    real_radii = knn_radii(real, k) if real_radii is None else real_radii.double()
    precision = covered(fake, real, real_radii).double().mean()
    recall = covered(real, fake, knn_radii(fake, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}
