"""The built-in world: procedurally drawn outdoor scenes with exact per-pixel labels.

Every scene is a pure function of ``(seed, index, size, variant)``: the same arguments always give the
same image and label map, on any machine, so runs are reproducible and held-out sets are just other seeds.
A variant keeps the classes and the rules and changes only how often things appear: ``town`` is mostly
buildings and roads, ``wild`` mostly trees, mountains, water and clouds (a second dataset to compare on).
Shapes are placed in resolution-independent coordinates (0..1), so a scene looks the same at 32 or
256 pixels, only sharper.

Objects live in context: windows, doors, roofs and domes are drawn only on buildings, domes sit on
top of buildings, trees and buildings stand on the ground, and nearer objects (lower on the image)
are drawn over farther ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gandissect.errors import BadValueError

# Label 0 means "no label" (the segmenter protocol's convention); the world labels every pixel.
CLASSES = (
    "-", "sky", "cloud", "mountain", "grass", "road", "water",
    "tree", "building", "roof", "dome", "door", "window",
)
CATEGORIES = {
    "sky": "stuff", "cloud": "stuff", "mountain": "stuff", "grass": "stuff", "road": "stuff",
    "water": "stuff", "tree": "object", "building": "object",
    "roof": "part", "dome": "part", "door": "part", "window": "part",
}
# The whole object a part belongs to: a window pixel is also a building pixel (second label).
PARENT = {"roof": "building", "dome": "building", "door": "building", "window": "building"}

# Colours used to draw label maps (not the scene's own colours).
LABEL_COLORS = np.array([
    [0, 0, 0], [110, 170, 240], [235, 235, 235], [120, 100, 130], [90, 190, 60],
    [110, 110, 110], [30, 80, 200], [20, 100, 30], [230, 190, 120], [200, 40, 30],
    [240, 200, 0], [120, 60, 10], [40, 220, 230],
], dtype=np.uint8)

MIN_SIZE, MAX_SIZE = 32, 256
_C = {name: i for i, name in enumerate(CLASSES)}

WALL_COLORS = np.array([[0.85, 0.78, 0.60], [0.74, 0.74, 0.72], [0.90, 0.85, 0.55], [0.72, 0.40, 0.30]])
ROOF_COLORS = np.array([[0.55, 0.12, 0.10], [0.28, 0.30, 0.38], [0.42, 0.26, 0.14]])
DOME_COLORS = np.array([[0.85, 0.65, 0.15], [0.25, 0.60, 0.55], [0.70, 0.45, 0.25]])
WINDOW_COLORS = np.array([[0.10, 0.15, 0.35], [0.05, 0.05, 0.10], [0.95, 0.85, 0.35]])


class UnknownClassError(BadValueError):
    pass


@dataclass(frozen=True)
class WorldPriors:
    """How often each kind of thing appears. Counts are numpy ``integers(low, high)`` ranges (high excluded),
    the others probabilities per scene. ``stream`` keeps each variant's random numbers apart (fixed, so that adding
    a variant changes no other's scenes)."""

    stream: int = 0
    clouds: tuple[int, int] = (0, 4)
    mountains: float = 0.6
    lake: float = 0.4
    road: float = 0.6
    buildings: tuple[int, int] = (0, 4)
    trees: tuple[int, int] = (0, 5)


VARIANTS = {
    "default": WorldPriors(),
    "town": WorldPriors(stream=1, clouds=(0, 3), mountains=0.15, lake=0.1, road=0.9, buildings=(2, 6), trees=(0, 2)),
    "wild": WorldPriors(stream=2, clouds=(1, 5), mountains=0.9, lake=0.7, road=0.15, buildings=(0, 2), trees=(3, 8)),
}


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise BadValueError(f"world variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    return variant


def class_index(name: str) -> int:
    """Index of a class by name; an unknown name lists the valid ones."""
    if name not in _C or name == "-":
        raise UnknownClassError(
            f"unknown class {name!r}; expected one of: {', '.join(CLASSES[1:])}")
    return _C[name]


def check_size(size: int) -> int:
    if not (MIN_SIZE <= size <= MAX_SIZE) or size & (size - 1):
        raise BadValueError(f"scene size must be a power of two from {MIN_SIZE} to {MAX_SIZE}, got {size}")
    return size


@dataclass
class _Canvas:
    """The image and label map being painted, with pixel-centre coordinates in 0..1."""

    image: np.ndarray  # (S, S, 3) float32 in [0, 1]
    label: np.ndarray  # (S, S) int64
    u: np.ndarray      # x coordinate of each pixel centre, (1, S)
    v: np.ndarray      # y coordinate (0 = top), (S, 1)
    rng: np.random.Generator

    def paint(self, mask: np.ndarray, cls: str, color, texture: float = 0.04) -> None:
        if not mask.any():
            return
        noise = self.rng.normal(0.0, texture, size=(int(mask.sum()), 1))
        self.image[mask] = np.clip(np.asarray(color, np.float32) * (1.0 + noise), 0, 1)
        self.label[mask] = _C[cls]

    def jitter(self, color, amount: float = 0.06) -> np.ndarray:
        return np.clip(np.asarray(color) + self.rng.uniform(-amount, amount, 3), 0, 1)

    def rect(self, x0, y0, x1, y1) -> np.ndarray:
        return (self.u >= x0) & (self.u < x1) & (self.v >= y0) & (self.v < y1)

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return ((self.u - cx) / rx) ** 2 + ((self.v - cy) / ry) ** 2 <= 1.0


def _ridge(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    """A mountain ridge height in 0..1 along x: a sum of a few random sinusoids."""
    h = np.zeros_like(u)
    for octave in range(4):
        freq = (octave + 1) * rng.uniform(1.5, 3.0)
        h += rng.uniform(0.3, 1.0) / (octave + 1) * np.sin(2 * np.pi * freq * u + rng.uniform(0, 6.3))
    return (h - h.min()) / (h.max() - h.min() + 1e-6)


def _draw_building(cv: _Canvas, base: float, scale: float) -> None:
    rng = cv.rng
    w = scale * rng.uniform(0.20, 0.34)
    h = scale * rng.uniform(0.20, 0.36)
    x0 = rng.uniform(-0.05, 1.05 - w)
    top = base - h
    wall = cv.jitter(WALL_COLORS[rng.integers(len(WALL_COLORS))])
    cv.paint(cv.rect(x0, top, x0 + w, base), "building", wall, texture=0.05)

    crown = rng.choice(["roof", "dome", "flat"], p=[0.45, 0.30, 0.25])
    if crown == "roof":
        rise = w * rng.uniform(0.25, 0.45)
        over = w * 0.06
        # Triangle: inside when the distance below the apex exceeds the slope-scaled offset from centre.
        half = w / 2 + over
        inside = (cv.v < top) & (cv.v >= top - rise) & (
            np.abs(cv.u - (x0 + w / 2)) <= half * (cv.v - (top - rise)) / rise)
        cv.paint(inside, "roof", cv.jitter(ROOF_COLORS[rng.integers(len(ROOF_COLORS))]))
    elif crown == "dome":
        rx = w * rng.uniform(0.28, 0.45)
        ry = rx * rng.uniform(0.8, 1.3)
        dome = cv.ellipse(x0 + w / 2, top, rx, ry) & (cv.v < top)
        cv.paint(dome, "dome", cv.jitter(DOME_COLORS[rng.integers(len(DOME_COLORS))]), texture=0.06)

    # Door: at the bottom of the wall.
    dw, dh = max(w * 0.18, 0.05), min(max(h * 0.35, 0.10), h * 0.6)
    dx = x0 + w * rng.uniform(0.2, 0.8) - dw / 2
    door = cv.rect(dx, base - dh, dx + dw, base)
    cv.paint(door, "door", cv.jitter([0.35, 0.20, 0.10], 0.05))

    # Windows: a grid on the wall above the door's height, away from the door.
    ws = max(0.05 * scale, 0.048)
    cols = max(1, int((w - ws) // (2 * ws)))
    rows = max(1, int((h - dh - ws) // (2 * ws)))
    lit = rng.uniform() < 0.3
    wcolor = cv.jitter(WINDOW_COLORS[2 if lit else rng.integers(2)], 0.04)
    gap_x = (w - cols * ws) / (cols + 1)
    for r in range(rows):
        wy = top + ws * 0.8 + r * 2 * ws
        if wy + ws > base - dh - ws * 0.3:
            break
        for c in range(cols):
            wx = x0 + gap_x + c * (ws + gap_x)
            cv.paint(cv.rect(wx, wy, wx + ws, wy + ws), "window", wcolor, texture=0.03)


def _draw_tree(cv: _Canvas, base: float, scale: float) -> None:
    rng = cv.rng
    h = scale * rng.uniform(0.16, 0.30)
    cx = rng.uniform(0.0, 1.0)
    trunk_w = max(h * 0.12, 0.03)
    trunk_h = h * 0.35
    cv.paint(cv.rect(cx - trunk_w / 2, base - trunk_h, cx + trunk_w / 2, base), "tree",
             cv.jitter([0.35, 0.22, 0.12], 0.04))
    leaf = cv.jitter([0.12, 0.38, 0.14], 0.05)
    crown_h = h - trunk_h * 0.6
    if rng.uniform() < 0.5:  # round deciduous crown
        r = crown_h / 2
        crown = cv.ellipse(cx, base - trunk_h * 0.6 - r, r * rng.uniform(0.7, 1.0), r)
    else:  # conifer: a triangle
        apex = base - h
        bottom = base - trunk_h * 0.6
        half = crown_h * 0.4
        crown = (cv.v >= apex) & (cv.v < bottom) & (np.abs(cv.u - cx) <= half * (cv.v - apex) / crown_h)
    cv.paint(crown, "tree", leaf, texture=0.12)


def render_scene(seed: int, index: int, size: int = 64, variant: str = "default") -> tuple[np.ndarray, np.ndarray]:
    """Draw scene ``index`` of world ``seed``: an (S, S, 3) uint8 image and an (S, S) int64 label map."""
    check_size(size)
    priors = VARIANTS[check_variant(variant)]
    # The default world keeps its original random stream; a variant's scenes are independent of it.
    key = [int(seed), int(index)] if priors.stream == 0 else [int(seed), int(index), priors.stream]
    rng = np.random.default_rng(key)
    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    cv = _Canvas(np.zeros((size, size, 3), np.float32), np.zeros((size, size), np.int64),
                 coords[None, :], coords[:, None], rng)
    horizon = rng.uniform(0.35, 0.6)

    # Sky: a vertical gradient from a deep to a pale blue.
    top, bottom = cv.jitter([0.25, 0.45, 0.85], 0.08), cv.jitter([0.65, 0.80, 0.95], 0.05)
    t = np.broadcast_to(cv.v / horizon, (size, size))[..., None]
    cv.image[:] = top * (1 - t) + bottom * t
    cv.label[:] = _C["sky"]

    for _ in range(rng.integers(*priors.clouds)):  # clouds: unions of overlapping ellipses
        cx, cy = rng.uniform(0, 1), rng.uniform(0.06, max(0.07, horizon - 0.12))
        blob = np.zeros((size, size), bool)
        for _ in range(rng.integers(2, 5)):
            blob |= cv.ellipse(cx + rng.uniform(-0.08, 0.08), cy + rng.uniform(-0.02, 0.02),
                               rng.uniform(0.05, 0.10), rng.uniform(0.025, 0.05))
        cv.paint(blob & (cv.v < horizon), "cloud", cv.jitter([0.93, 0.93, 0.95], 0.04), texture=0.03)

    if rng.uniform() < priors.mountains:  # mountains behind the horizon
        ridge = horizon - rng.uniform(0.08, 0.22) * (0.3 + 0.7 * _ridge(rng, cv.u))
        cv.paint((cv.v >= ridge) & (cv.v < horizon), "mountain", cv.jitter([0.45, 0.42, 0.50], 0.06),
                 texture=0.07)

    ground = np.broadcast_to(cv.v >= horizon, (size, size))
    cv.paint(ground, "grass", cv.jitter([0.35, 0.62, 0.20], 0.06), texture=0.10)

    if rng.uniform() < priors.lake:  # a lake, wide and flat in perspective
        ly = rng.uniform(horizon + 0.08, 0.9)
        lake = cv.ellipse(rng.uniform(0.1, 0.9), ly, rng.uniform(0.15, 0.35), rng.uniform(0.04, 0.09))
        ripples = 0.06 * np.sin(cv.v * size * 1.3)
        color = cv.jitter([0.15, 0.35, 0.60], 0.05)
        lake &= ground
        if lake.any():
            cv.paint(lake, "water", color, texture=0.03)
            cv.image[lake] = np.clip(cv.image[lake] * (1 + np.broadcast_to(ripples, lake.shape)[lake, None]), 0, 1)

    if rng.uniform() < priors.road:  # a road running to a vanishing point on the horizon
        vx, bx = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8)
        half_bottom = rng.uniform(0.15, 0.28)
        depth = np.clip((cv.v - horizon) / (1 - horizon), 0, 1)
        centre = vx + (bx - vx) * depth
        road = ground & (np.abs(cv.u - centre) <= 0.01 + half_bottom * depth)
        cv.paint(road, "road", cv.jitter([0.40, 0.40, 0.42], 0.05), texture=0.05)
        stripe = road & (np.abs(cv.u - centre) <= 0.008 + 0.015 * depth) & (np.sin(depth * 40) > 0)
        cv.image[stripe] = [0.85, 0.75, 0.25]

    # Buildings and trees stand on the ground; draw far (higher on the image) to near.
    things = [("building", rng.uniform(horizon + 0.03, 0.97)) for _ in range(rng.integers(*priors.buildings))]
    things += [("tree", rng.uniform(horizon + 0.02, 0.99)) for _ in range(rng.integers(*priors.trees))]
    for kind, base in sorted(things, key=lambda t: t[1]):
        scale = 0.6 + 0.8 * (base - horizon) / (1 - horizon)
        (_draw_building if kind == "building" else _draw_tree)(cv, base, scale)

    # Global colour jitter (brightness, contrast) and sensor noise.
    img = (cv.image - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.05, 0.05)
    img = img + rng.normal(0, 0.015, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), cv.label


def labels_with_parents(label: torch.Tensor) -> torch.Tensor:
    """(N, H, W) fine labels -> (N, 2, H, W): the class and the whole object it is part of (0 if none)."""
    parent_of = torch.zeros(len(CLASSES), dtype=torch.long)
    for part, whole in PARENT.items():
        parent_of[_C[part]] = _C[whole]
    return torch.stack([label, parent_of.to(label.device)[label]], dim=1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], the convention for all images in gandissect."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return images.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def colorize(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(..., H, W) label map -> (..., H, W, 3) uint8 picture."""
    return LABEL_COLORS[np.asarray(labels)]


class SceneDataset(Dataset):
    """Scenes ``start .. start+length-1`` of world ``seed`` as ([-1,1] image, label) tensor pairs."""

    def __init__(self, seed: int, length: int, size: int = 64, start: int = 0, variant: str = "default"):
        self.seed, self.length, self.size, self.start = seed, length, check_size(size), start
        self.variant = check_variant(variant)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        image, label = render_scene(self.seed, self.start + i, self.size, self.variant)
        return to_tensor(image), torch.from_numpy(label)


def world_statistics(seed: int, n: int, size: int = 64, variant: str = "default") -> dict:
    """Pixel share and presence rate (fraction of scenes containing it) of every class."""
    counts = np.zeros(len(CLASSES), np.int64)
    present = np.zeros(len(CLASSES), np.int64)
    for i in range(n):
        _, label = render_scene(seed, i, size, variant)
        c = np.bincount(label.ravel(), minlength=len(CLASSES))
        counts += c
        present += c > 0
    total = counts.sum()
    return {
        "seed": seed, "n": n, "size": size, "variant": variant,
        "classes": {
            name: {"category": CATEGORIES[name], "pixel_share": float(counts[i] / total),
                   "presence_rate": float(present[i] / n)}
            for i, name in enumerate(CLASSES) if i > 0
        },
    }


class ScenesDataModule(pl.LightningDataModule):
    """Training scenes from one seed, validation scenes from another (never the same scenes)."""

    def __init__(self, size: int = 64, batch_size: int = 32, train_seed: int = 0, train_length: int = 100_000,
                 val_seed: int = 1, val_length: int = 256, num_workers: int = 0):
        super().__init__()
        if train_seed == val_seed:
            raise BadValueError("train_seed and val_seed must differ so that validation scenes are held out")
        self.size, self.batch_size, self.num_workers = check_size(size), batch_size, num_workers
        self.train_set = SceneDataset(train_seed, train_length, size)
        self.val_set = SceneDataset(val_seed, val_length, size)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
