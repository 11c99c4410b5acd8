"""Seeded latent vectors: latent ``i`` of seed ``s`` is the same whatever the batch size or process count."""

from __future__ import annotations

from typing import Iterator

import torch


def seeded_latents(seed: int, n: int, dim: int, start: int = 0) -> torch.Tensor:
    """(n, dim) standard-normal latents with indices start..start+n-1 of stream ``seed``."""
    out = torch.empty(n, dim)
    gen = torch.Generator()
    for row, index in enumerate(range(start, start + n)):
        gen.manual_seed(seed * 1_000_003 + index)
        out[row] = torch.randn(dim, generator=gen)
    return out


@torch.no_grad()
def generated_batches(generator: torch.nn.Module, seed: int, n: int, batch_size: int = 50,
                      start: int = 0) -> Iterator[torch.Tensor]:
    """Images of latents start..start+n-1 of stream ``seed``, in batches, clamped to [-1, 1]."""
    device = next(generator.parameters()).device
    for first in range(start, start + n, batch_size):
        z = seeded_latents(seed, min(batch_size, start + n - first), generator.latent_dim, start=first)
        yield generator(z.to(device)).clamp(-1, 1)
