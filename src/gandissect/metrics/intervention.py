"""Intervention measurements (GAN Dissection, steps 2 and 4): do units cause a class, and where?

An edit of layer output r at units U inside region P is ``r' = (1 - a*m) r + a*m*k`` (``core.hooks``): ablation
is a = 1 on U, k = 0; insertion is a = 1 on U, k = one constant per unit. The average causal effect is
``ACE = E[s_c(inserted)] - E[s_c(ablated)]``, s_c the fraction of the pixels of P labelled c, over seeded latents.
Plain tensors and functions; the learned intervention that uses them is ``gandissect.steps.intervene``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gandissect.core.hooks import NetHook, ablate, edited_images, insert, layer_shape, module_device
from gandissect.core.latents import latent_batches
from gandissect.errors import GandissectError


# --- masks and fractions -------------------------------------------------------------------------
def class_mask(segmenter, images: torch.Tensor, class_idx: int) -> torch.Tensor:
    """(N, 1, H, W) float: 1 where any of the segmenter's labels of a pixel is ``class_idx``."""
    return (segmenter.labels(images) == class_idx).any(dim=1, keepdim=True).float()


def pixel_region(region: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    """A feature-map region (H, W) / (N, H, W) / (N, 1, H, W), or None for the whole image, as (N, 1, h, w)
    at the images' resolution (nearest: each cell covers its block of pixels)."""
    n, _, h, w = images.shape
    if region is None:
        return images.new_ones(n, 1, h, w)
    region = region.to(images)
    region = region.view(1, 1, *region.shape) if region.ndim == 2 else region
    region = region.unsqueeze(1) if region.ndim == 3 else region
    return F.interpolate(region, size=(h, w), mode="nearest").expand(n, 1, h, w)


def class_fraction(segmenter, images: torch.Tensor, class_idx: int, region: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the fraction of each image's pixels (of ``region``, a feature-map mask) labelled ``class_idx``."""
    where = pixel_region(region, images)
    return (class_mask(segmenter, images, class_idx) * where).sum(dim=(1, 2, 3)) / where.sum(dim=(1, 2, 3)).clamp(min=1)


def cell_fraction(mask: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) pixel mask -> (N, h, w): the fraction of each feature-map cell's pixels inside the mask."""
    return F.adaptive_avg_pool2d(mask, cells)[:, 0]


def cell_region(n: int, cells: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(N, h, w): one random feature-map cell per image."""
    h, w = cells
    chosen = torch.randint(h * w, (n,), generator=generator)
    return F.one_hot(chosen, h * w).float().view(n, h, w)


@torch.no_grad()
def ace(generator: nn.Module, segmenter, layer: str, units, class_idx: int, constants: torch.Tensor, seed: int,
        n: int, region: torch.Tensor | None = None, batch_size: int = 32) -> dict:
    """ACE of inserting vs ablating ``units`` in ``region`` over latents 0..n-1 of ``seed``:
    ``{"ace", "inserted", "ablated", "original"}`` (mean fractions of the region's pixels labelled c)."""
    device = module_device(generator)
    sums = {"inserted": 0.0, "ablated": 0.0, "original": 0.0}
    for z in latent_batches(seed, n, generator.latent_dim, batch_size):
        z = z.to(device)
        sums["original"] += float(class_fraction(segmenter, generator(z).clamp(-1, 1), class_idx, region).sum())
        sums["inserted"] += float(class_fraction(segmenter, insert(generator, layer, z, units, constants, region),
                                                 class_idx, region).sum())
        sums["ablated"] += float(class_fraction(segmenter, ablate(generator, layer, z, units, len(constants), region),
                                                class_idx, region).sum())
    means = {k: v / n for k, v in sums.items()}
    return {"ace": means["inserted"] - means["ablated"], **means}


@torch.no_grad()
def class_weighted_means(generator: nn.Module, segmenter, layer: str, class_idx: int, seed: int, n: int,
                         batch_size: int = 32) -> torch.Tensor:
    """(U,) the mean of each unit's value over feature-map cells, each cell weighted by its fraction of class-c
    pixels, over latents 0..n-1 of ``seed``."""
    device = module_device(generator)
    weighted, weight = None, 0.0
    with NetHook(generator, [layer]) as hook:
        for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), total=math.ceil(n / batch_size),
                      desc=f"insertion constants ({layer})", leave=False):
            images = hook(z.to(device)).clamp(-1, 1)
            r = hook.retained[layer].float()
            w = cell_fraction(class_mask(segmenter, images, class_idx), r.shape[-2:])  # (N, h, w)
            part = torch.einsum("nuhw,nhw->u", r, w)
            weighted = part if weighted is None else weighted + part
            weight += float(w.sum())
    if weight == 0:
        raise GandissectError(f"class {segmenter.classes[class_idx]!r} appears in none of the {n} generated images; "
                              "no insertion constant can be measured")
    return (weighted / weight).cpu()


# --- removal curves and context ---------------------------------------------------------------------
@torch.no_grad()
def removal_curve(generator: nn.Module, segmenter, layer: str, ranking, class_idx: int, seed: int, n: int,
                  max_units: int = 30, batch_size: int = 8, desc: str = "removal") -> list[float]:
    """Fraction of class-c pixels that disappear when the top 1..max_units units of ``ranking`` are ablated
    everywhere: ``1 - sum(c pixels after) / sum(c pixels before)`` over latents 0..n-1 of ``seed``.
    Entry k is for the top k+1 units. Every prefix of one latent batch runs in one forward pass."""
    device = module_device(generator)
    ranking = list(ranking)[:max_units]
    units_total = layer_shape(generator, layer)[0]
    prefixes = torch.zeros(len(ranking), units_total, device=device)  # row k: alpha of the top k+1 units
    for k, unit in enumerate(ranking):
        prefixes[k:, unit] = 1.0
    before, after = 0.0, torch.zeros(len(ranking), dtype=torch.float64)
    for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), total=math.ceil(n / batch_size),
                  desc=desc, leave=False):
        z = z.to(device)
        before += float(class_mask(segmenter, generator(z).clamp(-1, 1), class_idx).sum())
        repeated = z.repeat(len(ranking), 1)                                   # prefix-major
        alpha = prefixes.repeat_interleave(len(z), dim=0)[:, :, None, None]    # (K*N, U, 1, 1)
        images = edited_images(generator, layer, repeated, alpha, 0.0)
        counts = class_mask(segmenter, images, class_idx).sum(dim=(1, 2, 3)).view(len(ranking), len(z)).sum(1)
        after += counts.double().cpu()
    if before == 0:
        raise GandissectError(f"class {segmenter.classes[class_idx]!r} appears in none of the {n} images; "
                              "nothing can be removed")
    return [round(float(1 - a / before), 6) for a in after]


@torch.no_grad()
def context_table(generator: nn.Module, segmenter, layer: str, units, class_idx: int, constants: torch.Tensor,
                  seed: int, n: int, batch_size: int = 32) -> list[dict]:
    """Insert ``units`` at one random feature-map cell per image; group the change in the cell's fraction of
    class-c pixels by the class that covered most of the cell before the edit. One row per prior class:
    ``{"class", "cells", "before", "after", "effect"}`` (means over the cells), largest effect first."""
    device = module_device(generator)
    classes = segmenter.classes
    cells = layer_shape(generator, layer)[1:]
    pick = torch.Generator().manual_seed(seed)
    count = torch.zeros(len(classes), dtype=torch.float64)
    before_sum, after_sum = count.clone(), count.clone()
    for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), total=math.ceil(n / batch_size),
                  desc="context", leave=False):
        z = z.to(device)
        region = cell_region(len(z), cells, pick).to(device)
        original = generator(z).clamp(-1, 1)
        # the most specific label (index 0: a door pixel is door, not building) decides the cell's prior class
        finest = segmenter.labels(original)[:, 0]
        where = pixel_region(region, original)[:, 0].bool()
        votes = torch.zeros(len(z), len(classes), device=device)
        votes.scatter_add_(1, (finest * where).flatten(1), where.flatten(1).float())
        prior = votes.argmax(dim=1).cpu()
        before = class_fraction(segmenter, original, class_idx, region).cpu().double()
        after = class_fraction(segmenter, insert(generator, layer, z, units, constants, region), class_idx,
                               region).cpu().double()
        count += torch.bincount(prior, minlength=len(classes)).double()
        before_sum.index_add_(0, prior, before)
        after_sum.index_add_(0, prior, after)
    rows = [{"class": classes[c], "cells": int(count[c]), "before": round(float(before_sum[c] / count[c]), 6),
             "after": round(float(after_sum[c] / count[c]), 6),
             "effect": round(float((after_sum[c] - before_sum[c]) / count[c]), 6)}
            for c in range(len(classes)) if count[c] > 0]
    return sorted(rows, key=lambda row: -row["effect"])
