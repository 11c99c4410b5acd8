"""The GAN losses, written once: training (``steps.train``) and the artifact segmenter's fine-tuning of D
(``steps.artifacts``) both use them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, r1_gamma: float = 0.0,
                       r1_interval: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Non-saturating loss ``softplus(D(fake)) + softplus(-D(real))``, plus the R1 penalty on real images when
    ``r1_gamma > 0`` (lazy regularization: call with the penalty every ``r1_interval`` steps, scaled up to match).

    Returns (loss to minimize, parts for logging: ``d_loss`` without R1, ``r1``, ``real_score``, ``fake_score``).
    """
    regularize = r1_gamma > 0
    real = real.detach().requires_grad_(regularize)
    real_logits, fake_logits = D(real), D(fake.detach())
    d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    parts = {"d_loss": d_loss.detach(), "real_score": real_logits.detach().mean(),
             "fake_score": fake_logits.detach().mean()}
    if not regularize:
        return d_loss, parts
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    r1 = grad.square().sum(dim=(1, 2, 3)).mean()
    parts["r1"] = r1.detach()
    return d_loss + 0.5 * r1_gamma * r1_interval * r1, parts


def generator_loss(D: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-D(G(z)))``."""
    return F.softplus(-D(fake)).mean()
