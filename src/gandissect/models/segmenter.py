"""Segmenters: the protocol every segmenter follows, and the built-in scene segmenter.

A segmenter turns images (float (N, 3, H, W) in [-1, 1]) into labels. Any module that offers
``classes``, ``categories``, ``labels()`` and ``probs()`` plugs into gandissect: the scene segmenter
below, the artifact segmenter made from a discriminator, or an adapter around a real-world model
(``models.hf_segmenters``). ``load_segmenter`` turns a config's ``segmenter:`` value into one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gandissect.checkpoint import load_state_checked, read_checkpoint, save_checkpoint
from gandissect.core.factory import is_factory_spec, load_factory
from gandissect.core.runs import model_identity
from gandissect.data import scenes
from gandissect.errors import ConfigError

SEGMENTER_SPECS = ("a scene-segmenter .safetensors file, hf:<model id or local directory> (a transformers "
                   "SegFormer / UperNet / Mask2Former), or package.module:factory")


@runtime_checkable
class Segmenter(Protocol):
    classes: tuple[str, ...]       # index -> name; index 0 is "no label"
    categories: dict[str, str]     # class name -> "object" / "part" / "stuff" / ...

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) int64 labels, K >= 1 per pixel, 0 = none."""

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) class probabilities, differentiable with respect to the images."""


def class_index(segmenter: Segmenter, name: str) -> int:
    """Index of class ``name`` in a segmenter; an unknown name lists the classes it has."""
    if name in segmenter.classes and segmenter.classes.index(name) > 0:
        return segmenter.classes.index(name)
    raise scenes.UnknownClassError(
        f"unknown class {name!r}; this segmenter has: {', '.join(segmenter.classes[1:])}")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class SceneSegmenter(nn.Module):
    """A small U-Net for the scene world: full-resolution skips keep thin parts (windows, doors) sharp.

    Images of any size are resized to ``input_size`` (the resolution it was trained at) and the
    predictions resized back, so it segments 32..256 pixel scenes alike.
    """

    ARCH = "scene-segmenter"

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96, 128), input_size: int = 64,
                 classes: tuple[str, ...] = scenes.CLASSES, categories: dict[str, str] | None = None):
        super().__init__()
        self.widths, self.input_size = tuple(widths), input_size
        self.classes = tuple(classes)
        self.categories = dict(categories if categories is not None else scenes.CATEGORIES)
        self.down = nn.ModuleList()
        c_in = 3
        for w in self.widths:
            self.down.append(_block(c_in, w))
            c_in = w
        self.up = nn.ModuleList(
            _block(self.widths[i + 1] + self.widths[i], self.widths[i]) for i in reversed(range(len(self.widths) - 1)))
        self.head = nn.Conv2d(self.widths[0], len(self.classes), 1)

    def config(self) -> dict:
        return {"widths": list(self.widths), "input_size": self.input_size, "classes": list(self.classes),
                "categories": self.categories}

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at every scale, finest first."""
        x = images
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C, H, W) at the images' own resolution."""
        skips = self.encode(images)
        x = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1))
        logits = self.head(x)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).softmax(dim=1)

    @torch.no_grad()
    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W): the predicted class, and the whole object it is part of (building for a window)."""
        return scenes.labels_with_parents(self(images).argmax(dim=1))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) image descriptors: the coarsest feature map, average-pooled."""
        return self.encode(images)[-1].mean(dim=(2, 3))

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> "SceneSegmenter":
        config, tensors = read_checkpoint(path, cls.ARCH)
        model = cls(**config)
        load_state_checked(model, tensors, str(path))
        return model.eval()


def load_segmenter(spec: str) -> nn.Module:
    """The segmenter a config's ``segmenter:`` names: a scene-segmenter checkpoint file, ``hf:<id or directory>``
    (``models.hf_segmenters``; transformers is imported only then), or ``package.module:factory`` (a function of no
    arguments returning a segmenter module). Anything else is one ConfigError line naming the value."""
    if spec.startswith("hf:"):
        if not spec[3:].strip():
            raise ConfigError(f"segmenter {spec!r}: expected hf:<model id or local directory> after hf:")
        from gandissect.models.hf_segmenters import load_hf_segmenter

        return load_hf_segmenter(spec[3:])
    if is_factory_spec(spec):
        return _from_factory(spec)
    if Path(spec).suffix == ".safetensors" or Path(spec).is_file():
        return SceneSegmenter.load(spec)
    raise ConfigError(f"segmenter {spec!r}: not found; expected {SEGMENTER_SPECS}")


def _from_factory(spec: str) -> nn.Module:
    made = load_factory(spec, "segmenter")()
    missing = [name for name in ("classes", "categories", "labels", "probs") if not hasattr(made, name)]
    if missing or not isinstance(made, nn.Module):
        lacks = f"lacks {', '.join(missing)}" if missing else f"is a {type(made).__name__}, not a torch.nn.Module"
        raise ConfigError(f"segmenter {spec!r}: the factory's segmenter {lacks}; expected a module with classes, "
                          "categories, labels(images) and probs(images) (see gandissect.models.segmenter.Segmenter)")
    return made.eval()


def segmenter_and_identity(spec: str, given: nn.Module | None = None) -> tuple[nn.Module, str]:
    """The segmenter a step uses (``given``, else ``load_segmenter(spec)``) and how its run records it: the sha256
    of a checkpoint file, else the digest of the module's weights (a hf: model, a factory's, one handed over)."""
    if given is not None:
        return given, model_identity(spec, given)
    segmenter = load_segmenter(spec)
    from_file = isinstance(segmenter, SceneSegmenter) and Path(spec).is_file()
    return segmenter, model_identity(spec, None if from_file else segmenter)


def iou_metric(classes: tuple[str, ...]):
    """Per-class IoU (intersection and union summed over all pixels of all images) as a torchmetrics metric.

    A class that appears neither in the truth nor in the prediction gets NaN, not a misleading 0.
    """
    from torchmetrics.classification import MulticlassJaccardIndex

    return MulticlassJaccardIndex(num_classes=len(classes), average="none", zero_division=float("nan"))


def iou_summary(metric, classes: tuple[str, ...]) -> dict:
    """Mean IoU over the classes that occurred, and the IoU of each class (None where it did not occur).

    Index 0 ("no label") is left out: the world labels every pixel, so it never occurs.
    """
    values = metric.compute()[1:].tolist()
    per_class = {name: (None if math.isnan(v) else v) for name, v in zip(classes[1:], values)}
    present = [v for v in per_class.values() if v is not None]
    return {"miou": sum(present) / len(present) if present else None, "per_class_iou": per_class}


@torch.no_grad()
def evaluate_segmenter(segmenter: SceneSegmenter, seed: int, n: int, size: int = 64,
                       batch_size: int = 50, progress: bool = True, variant: str = "default") -> dict:
    """IoU per class (pixels summed over all scenes) of ``segmenter`` on scenes 0..n-1 of world ``seed``."""
    metric = iou_metric(segmenter.classes)
    loader = DataLoader(scenes.SceneDataset(seed, n, size, variant=variant), batch_size=batch_size)
    for images, label in tqdm(loader, desc="segmenting", disable=not progress, leave=False):
        metric.update(segmenter(images).argmax(dim=1), label)
    return {**iou_summary(metric, segmenter.classes), "n": n, "seed": seed, "size": size, "variant": variant}
