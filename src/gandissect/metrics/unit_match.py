"""Which unit of one model does the same job as a unit of another: activation correlation on shared latents.

Two checkpoints of one GAN run on the same latents; at a layer of the same spatial size, every pair of units
(a of the first, b of the second) gets the Pearson correlation of their activations over all latents and
positions. A unit's best match is the unit of the other model it correlates with most.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class UnitCorrelation(Metric):
    """Pearson correlation between the units of two feature maps of one shape (N, U, H, W) and (N, V, H, W),
    over every sample and position. ``compute()`` gives the (U, V) matrix."""

    full_state_update = False

    def __init__(self, units_a: int, units_b: int, **kwargs):
        super().__init__(**kwargs)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_a", torch.zeros(units_a, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_b", torch.zeros(units_b, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sq_a", torch.zeros(units_a, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sq_b", torch.zeros(units_b, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("cross", torch.zeros(units_a, units_b, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
            raise ValueError(f"feature maps {tuple(a.shape)} and {tuple(b.shape)}: expected the same samples and "
                             "spatial size")
        a = a.transpose(0, 1).flatten(1).double()  # (U, samples x positions)
        b = b.transpose(0, 1).flatten(1).double()
        self.count += a.shape[1]
        self.sum_a += a.sum(1)
        self.sum_b += b.sum(1)
        self.sq_a += (a * a).sum(1)
        self.sq_b += (b * b).sum(1)
        self.cross += a @ b.T

    def compute(self) -> torch.Tensor:
        mean_a, mean_b = self.sum_a / self.count, self.sum_b / self.count
        covariance = self.cross / self.count - mean_a[:, None] * mean_b[None, :]
        std_a = (self.sq_a / self.count - mean_a ** 2).clamp_min(0).sqrt()
        std_b = (self.sq_b / self.count - mean_b ** 2).clamp_min(0).sqrt()
        scale = std_a[:, None] * std_b[None, :]
        # a unit that never changes (dead) correlates with nothing
        return torch.where(scale > 0, covariance / scale.clamp_min(1e-30), torch.zeros_like(covariance)).float()


def best_matches(correlation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit b (column): the unit a (row) it correlates with most, and that correlation."""
    values, rows = correlation.max(dim=0)
    return rows, values
