"""Routes to the artifact units: each ranks a layer's units by a different evidence and gives the units (or the
soft strengths) to switch off.

- ``iou``: the k units whose thresholded maps overlap the artifact class most (IoU, from the artifact dissection).
- ``iou_effect``: the top ``candidates`` units by IoU, each ablated alone on held-out latents; the k whose ablation
  removes the most flagged area (a positive causal effect) are chosen.
- ``unit_fd``: the paper's second route - per unit, the Frechet distance of the images that activate it most
  (its top images by maximum activation) to the real scenes; the k worst.
- ``learned``, ``learned_soft``: the learned repair (``learned.ArtifactRepairModule``): its top k units by alpha
  ablated fully, or alpha applied as it is (r' = (1 - alpha) r).
- ``multilayer``: ``iou``'s units, then later layers one by one, each dissected again on the generator as repaired
  so far (``run.look_again``).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from gandissect.core import distributed
from gandissect.core.hooks import NetHook, scaled_units, unit_alpha
from gandissect.core.latents import generated_batches, latent_batches
from gandissect.metrics.bootstrap import FrechetToReal
from gandissect.models.artifact_segmenter import ArtifactSegmenter


def default_k(width: int) -> int:
    return max(1, round(0.04 * width))  # the paper ablated 20 of 512 units (3.9%)


def ranked_by(scores: list[float], descending: bool = True) -> list[int]:
    """Units sorted by score (ties: lower unit first)."""
    return sorted(range(len(scores)), key=lambda u: ((-scores[u] if descending else scores[u]), u))


@torch.no_grad()
def flagged_share(generator: nn.Module, artifact_segmenter: ArtifactSegmenter, variant: dict[str, torch.Tensor],
                  seed: int, n: int, batch_size: int) -> float:
    """The share of pixels flagged as artifact over latents 0..n-1 of ``seed``, with ``variant``'s edits (layer ->
    unit scales; {} for the original)."""
    with scaled_units(generator, variant):
        return artifact_segmenter.flag_rate(generated_batches(generator, seed, n, batch_size))


def ablation_effects(generator: nn.Module, artifact_segmenter: ArtifactSegmenter, layer: str, candidates: list[int],
                     width: int, seed: int, n: int, batch_size: int) -> tuple[float, dict[int, float]]:
    """The flagged share of the original, and per candidate how much ablating it alone lowers that share. Each
    process measures its share of the ablations; every process gets all of them."""
    ablations = [()] + [(u,) for u in candidates]
    measured = distributed.gather_dicts({units: flagged_share(
        generator, artifact_segmenter, {layer: 1 - unit_alpha(units, width)} if units else {}, seed, n, batch_size)
        for units in tqdm(
        distributed.my_share(ablations), desc="ablation effect of candidates", unit="ablation", leave=False)})
    return measured[()], {u: measured[()] - measured[(u,)] for u in candidates}


def choose_by_effect(iou: list[float], effects: dict[int, float], k: int) -> list[int]:
    """Among the measured candidates, the k with the largest positive causal effect (fewer when fewer have one);
    ties keep the IoU order."""
    ranked = sorted(effects, key=lambda u: (-effects[u], -iou[u], u))
    return [u for u in ranked if effects[u] > 0][:k]


@torch.no_grad()
def unit_fds(generator: nn.Module, backbone: nn.Module, layer: str, distance: FrechetToReal, seed: int, n: int,
             top: int, batch_size: int) -> list[float]:
    """Per unit of ``layer``: the Frechet distance to the real scenes of the features of its ``top`` images (by
    the unit's maximum activation) among latents 0..n-1 of ``seed``."""
    device = next(generator.parameters()).device
    features, peaks = [], []
    with NetHook(generator, [layer]) as hook:
        for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), desc="per-unit FD", leave=False,
                      total=-(-n // batch_size)):
            images = hook(z.to(device)).clamp(-1, 1)
            peaks.append(hook.retained[layer].flatten(2).amax(dim=2).cpu())
            out = backbone(images)
            features.append((out.mean(dim=(2, 3)) if out.ndim == 4 else out).double().cpu())
    features, peaks = torch.cat(features), torch.cat(peaks)
    best = peaks.topk(min(top, n), dim=0).indices  # (top, units)
    return [distance(features[best[:, u]].numpy()) for u in range(peaks.shape[1])]


def planted_recovery(planted: list[int], rankings: dict[str, list[int]], chosen: dict[str, list[int]]) -> dict:
    """Precision and recall of the planted units among each route's chosen units, and among as many top units of
    each ranking as were planted."""
    planted_set = set(planted)

    def scores(found: list[int]) -> dict:
        hits = len(planted_set & set(found))
        return {"units": found, "hits": hits, "precision": hits / len(found) if found else None,
                "recall": hits / len(planted_set)}

    return {"units": sorted(planted_set),
            "chosen": {route: scores(units) for route, units in chosen.items()},
            "top_planted_count": {name: scores(order[:len(planted_set)]) for name, order in rankings.items()}}
