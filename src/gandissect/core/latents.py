"""Seeded latents: every z in gandissect comes from here.

Latent ``i`` of stream ``seed`` is the same vector whatever the batch size, the start of a batch or the number of
processes, so a dissection, an ACE and a repair that name the same (seed, index) see the same image.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Dataset


def seeded_latents(seed: int, n: int, dim: int, start: int = 0) -> torch.Tensor:
    """(n, dim) standard-normal latents with indices start..start+n-1 of stream ``seed``."""
    out = torch.empty(n, dim)
    gen = torch.Generator()
    for row, index in enumerate(range(start, start + n)):
        gen.manual_seed(seed * 1_000_003 + index)
        out[row] = torch.randn(dim, generator=gen)
    return out


def latent_batches(seed: int, n: int, dim: int, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
    """Latents start..start+n-1 of stream ``seed`` in batches of ``batch_size``."""
    for first in range(start, start + n, batch_size):
        yield seeded_latents(seed, min(batch_size, start + n - first), dim, first)


class LatentBatches(Dataset):
    """Item i: batch ``batch_ids[i]`` of latents 0..n-1 of stream ``seed``, as (sample indices, latents).

    Give each process its own ``batch_ids`` (e.g. ``range(rank, batches, world)``) to split a pass over processes;
    ``batch_ids=None`` means every batch."""

    def __init__(self, seed: int, dim: int, n: int, batch_size: int, batch_ids: list[int] | None = None):
        self.seed, self.dim, self.n, self.batch_size = seed, dim, n, batch_size
        self.batch_ids = list(range(math.ceil(n / batch_size))) if batch_ids is None else list(batch_ids)

    def __len__(self) -> int:
        return len(self.batch_ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.batch_ids[i] * self.batch_size
        count = min(self.batch_size, self.n - start)
        return torch.arange(start, start + count), seeded_latents(self.seed, count, self.dim, start)


@torch.no_grad()
def generated_batches(generator: torch.nn.Module, seed: int, n: int, batch_size: int = 50,
                      start: int = 0) -> Iterator[torch.Tensor]:
    """Images of latents start..start+n-1 of stream ``seed``, in batches, clamped to [-1, 1]."""
    device = next(generator.parameters()).device
    for z in latent_batches(seed, n, generator.latent_dim, batch_size, start):
        yield generator(z.to(device)).clamp(-1, 1)


def generate(generator: torch.nn.Module, seed: int, n: int, batch_size: int = 100, start: int = 0) -> torch.Tensor:
    """Images (n, 3, R, R) in [-1, 1] for latents start..start+n-1 of stream ``seed``."""
    return torch.cat(list(generated_batches(generator, seed, n, batch_size, start)))
