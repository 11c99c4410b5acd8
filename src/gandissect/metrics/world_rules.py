"""The built-in world's grammar as a metric: how often a generated scene breaks the rules every real scene obeys.

Real scenes are drawn by rules (``gandissect.data.scenes``): doors and windows sit on buildings, roofs and domes on
top of buildings, trees and buildings stand on the ground, and the ground lies below the sky. A label map (the
world's exact labels, or a segmenter's finest label of a generated image) breaks them where

- ``part_off_building``: a door or window region touches no building pixel (8-neighbourhood);
- ``crown_off_building``: nothing directly below a roof or dome region is building, door, window or an occluding
  tree;
- ``floating_object``: nothing directly below a tree or building region (nor the image's bottom edge) is ground
  (grass, road, water) or the roof or dome of a nearer building;
- ``ground_over_sky``: a grass, road or water pixel has sky or cloud directly below it.

A region is a connected component (8-neighbourhood) of the class or classes a rule concerns; a region that breaks
a rule counts all its pixels as violating (``ground_over_sky`` counts pixels). This is ground truth for
"artifact" that no discriminator is needed for.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric

from gandissect.data.scenes import CLASSES

RULES = ("part_off_building", "crown_off_building", "floating_object", "ground_over_sky")
_C = {name: i for i, name in enumerate(CLASSES)}
_EIGHT = np.ones((3, 3), bool)
GROUND = [_C[c] for c in ("grass", "road", "water")]
BUILDING_FAMILY = [_C[c] for c in ("building", "roof", "dome", "door", "window")]
OBJECTS = [_C["tree"], *BUILDING_FAMILY]
SKY = [_C["sky"], _C["cloud"]]

# rule -> (classes whose regions are checked, classes that must be found directly below some pixel of a region)
_BELOW_RULES = {
    "crown_off_building": ([_C["roof"], _C["dome"]], [_C["building"], _C["door"], _C["window"], _C["tree"]]),
    # trees, walls and their doors and windows touching each other form one region, so what stands below a region
    # is ground (or a roof or dome of a nearer building in front of it)
    "floating_object": ([_C["tree"], _C["building"], _C["door"], _C["window"]], GROUND + [_C["roof"], _C["dome"]]),
}


def _below(label: np.ndarray) -> np.ndarray:
    """The label of the pixel directly below each pixel (-1 on the bottom row, which stands on the image edge)."""
    out = np.full_like(label, -1)
    out[:-1] = label[1:]
    return out


def _regions_without(regions: np.ndarray, count: int, found: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels of the regions (labelled 1..count) in which ``found`` is nowhere true."""
    hits = np.bincount(regions[found & (regions > 0)], minlength=count + 1)
    bad = hits == 0
    bad[0] = False
    return bad[regions]


def violation_maps(label: np.ndarray) -> dict[str, np.ndarray]:
    """Per rule, an (H, W) bool map of the pixels of ``label`` (an (H, W) map of the world's class indices) that
    break it."""
    below = _below(label)
    maps = {}
    parts, count = ndimage.label(np.isin(label, [_C["door"], _C["window"]]), _EIGHT)
    touches = ndimage.binary_dilation(label == _C["building"], _EIGHT)
    maps["part_off_building"] = _regions_without(parts, count, touches)
    for rule, (checked, allowed) in _BELOW_RULES.items():
        mask = np.isin(label, checked)
        regions, count = ndimage.label(mask, _EIGHT)
        ok = np.isin(below, allowed) | (below == -1)
        maps[rule] = _regions_without(regions, count, ok & mask)
        if rule == "floating_object":  # a door or window region without a wall breaks part_off_building instead
            maps[rule] &= ~_regions_without(regions, count, np.isin(label, [_C["tree"], _C["building"]]))
    maps["ground_over_sky"] = np.isin(label, GROUND) & np.isin(below, SKY)
    return maps


def violations(labels: torch.Tensor | np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, H, W) label maps -> (N, H, W) bool map of every violating pixel, and per rule an (N,) bool array of the
    images that break it."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    union = np.zeros(labels.shape, bool)
    broken = {rule: np.zeros(len(labels), bool) for rule in RULES}
    for i, label in enumerate(labels):
        for rule, where in violation_maps(label).items():
            union[i] |= where
            broken[rule][i] = where.any()
    return union, broken


class RuleViolations(Metric):
    """Streams label maps; ``compute()`` gives the share of images that break a rule (any, and per rule) and the
    share of object pixels (tree, building and its parts) that are in violating regions. Sums across processes."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("images", "images_broken", "object_pixels", "violating_object_pixels", "violating_pixels",
                     "pixels"):
            self.add_state(name, torch.tensor(0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("per_rule", torch.zeros(len(RULES), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, labels: torch.Tensor) -> None:
        """``labels``: (N, H, W) finest class indices (e.g. the segmenter's first label)."""
        union, broken = violations(labels)
        objects = np.isin(np.asarray(labels.cpu()), OBJECTS)
        self.images += len(union)
        self.images_broken += float(np.stack(list(broken.values())).any(axis=0).sum())
        self.per_rule += torch.tensor([float(broken[rule].sum()) for rule in RULES], dtype=torch.float64)
        self.object_pixels += float(objects.sum())
        self.violating_object_pixels += float((objects & union).sum())
        self.violating_pixels += float(union.sum())
        self.pixels += float(union.size)

    def compute(self) -> dict:
        images = max(float(self.images), 1.0)
        return {"images": int(self.images),
                "images_broken": float(self.images_broken) / images,
                "per_rule": {rule: float(v) / images for rule, v in zip(RULES, self.per_rule)},
                "object_pixels_violating": float(self.violating_object_pixels) / max(float(self.object_pixels), 1.0),
                "pixels_violating": float(self.violating_pixels) / max(float(self.pixels), 1.0)}
